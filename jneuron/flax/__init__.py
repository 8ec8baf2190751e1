"""Flax NNX adapters: model-side methods (conductance, Neural Rejuvenation, ON-LSTM)."""

from jneuron.flax.conductance import Conductance as Conductance
from jneuron.flax.conductance import conductance as conductance
from jneuron.flax.onlstm import ONLSTM as ONLSTM
from jneuron.flax.onlstm import ONLSTMCell as ONLSTMCell
from jneuron.flax.onlstm import build_tree as build_tree
from jneuron.flax.onlstm import cumax as cumax
from jneuron.flax.rejuvenation import BNMLP as BNMLP
from jneuron.flax.rejuvenation import SRLinear as SRLinear
from jneuron.flax.rejuvenation import bn_scale_l1 as bn_scale_l1
from jneuron.flax.rejuvenation import dead_neurons as dead_neurons
from jneuron.flax.rejuvenation import rejuvenate as rejuvenate
from jneuron.flax.rejuvenation import utilization as utilization
