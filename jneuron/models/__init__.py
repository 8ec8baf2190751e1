"""Models jneuron ships: a small MLP and its compiled trainer, ON-LSTM (ordered neurons), a word-level LM.

>>> from flax import nnx
>>> from jneuron.models import MLP
>>> MLP(8, (4,), 2, rngs=nnx.Rngs(0)).layers[0].out_features
4
"""

from jneuron.models.mlp import MLP as MLP
from jneuron.models.mlp import Dense as Dense
from jneuron.models.mlp import accuracy as accuracy
from jneuron.models.mlp import train_classifier as train_classifier
from jneuron.models.onlstm import ONLSTM as ONLSTM
from jneuron.models.onlstm import ONLSTMCell as ONLSTMCell
from jneuron.models.word_lm import WordLM as WordLM
from jneuron.models.word_lm import train_word_lms as train_word_lms
