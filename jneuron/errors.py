"""The exceptions and warnings jneuron raises, so callers can catch them precisely."""


class JNeuronError(ValueError):
    """Bad input to a jneuron analysis; the message says what was expected and where."""


class DeadNeuronWarning(UserWarning):
    """Some neurons are constant over the tokens; they score 0 and are listed in the result."""


class FewTokensWarning(UserWarning):
    """Fewer tokens than neurons: covariances are rank deficient and similarity measures overfit."""


class Float64UnavailableWarning(UserWarning):
    """float64 input is computed in float32: the platform (e.g. a TPU) has no float64. Given once per process."""


class StaleCheckpointWarning(UserWarning):
    """A checkpoint was written for other data or settings (other files, other contents, a changed file);
    the pass starts over and replaces it."""
