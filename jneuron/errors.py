"""The exceptions and warnings jneuron raises, so callers can catch them precisely."""


class JNeuronError(ValueError):
    """Bad input to a jneuron analysis; the message says what was expected and where."""


class DeadNeuronWarning(UserWarning):
    """Some neurons are constant over the tokens (:mod:`jneuron.streaming.constant`); they get the method's
    neutral score, rank last and are listed in the result's ``dead``."""


class QuantizationWarning(UserWarning):
    """A quantization or measure does not suit the activations: a 1-bit cut at 0.5 (for sigmoid outputs) on
    signed values, or class selectivity (bounded only for non-negative outputs) on signed values."""


class FewTokensWarning(UserWarning):
    """Fewer tokens than neurons: covariances are rank deficient and similarity measures overfit."""


class Float64UnavailableWarning(UserWarning):
    """float64 input is computed in float32: the platform (e.g. a TPU) has no float64. Given once per process."""


class StaleCheckpointWarning(UserWarning):
    """A checkpoint was written for other data or settings (other files, other contents, a changed file);
    the pass starts over and replaces it."""
