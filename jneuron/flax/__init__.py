"""Flax adapters: capture activations, ablate and control neurons by masking, ablation curves.

Works on Flax NNX models without editing their code (surgery on a copy: wrappers at named submodule
paths), and on Linen models through :class:`jneuron.flax.linen.Linen` (module + variables).

Modules: ``paths`` (submodules by path), ``taps`` (:class:`Tap`: name any intermediate value),
``capturing`` (capture, ``run_with_cache``), ``ablation`` (masking, patching, steering, sweeps), ``curves``
(ablation curves), ``controls`` (control and subspace erasure), ``linen`` (Linen versions), and the
model-side methods ``conductance``, ``rejuvenation`` (Neural Rejuvenation) and ``onlstm`` (ordered neurons).

>>> import numpy as np
>>> from flax import nnx
>>> from jneuron import flax as jnf
>>> from jneuron.models import MLP
>>> model = MLP(8, (4,), 2, rngs=nnx.Rngs(0))
>>> jnf.capture(model, np.ones((3, 8), np.float32), ["layers/0"])["layers/0"].shape
(3, 4)
"""

from jneuron.flax import linen as linen
from jneuron.flax.ablation import AblationMask as AblationMask
from jneuron.flax.ablation import AblationShift as AblationShift
from jneuron.flax.ablation import AblationValue as AblationValue
from jneuron.flax.ablation import Masked as Masked
from jneuron.flax.ablation import ablate as ablate
from jneuron.flax.ablation import balance_bias as balance_bias
from jneuron.flax.ablation import layer_means as layer_means
from jneuron.flax.ablation import patch as patch
from jneuron.flax.ablation import steer as steer
from jneuron.flax.ablation import sweep as sweep
from jneuron.flax.capturing import Capture as Capture
from jneuron.flax.capturing import capture as capture
from jneuron.flax.capturing import capture_batches as capture_batches
from jneuron.flax.capturing import capture_source as capture_source
from jneuron.flax.capturing import output_shapes as output_shapes
from jneuron.flax.capturing import run_with_cache as run_with_cache
from jneuron.flax.conductance import Conductance as Conductance
from jneuron.flax.conductance import conductance as conductance
from jneuron.flax.controls import ControlSweep as ControlSweep
from jneuron.flax.controls import NeuronStats as NeuronStats
from jneuron.flax.controls import control as control
from jneuron.flax.controls import control_sweep as control_sweep
from jneuron.flax.controls import erase as erase
from jneuron.flax.controls import neuron_stats as neuron_stats
from jneuron.flax.curves import AblationCurve as AblationCurve
from jneuron.flax.curves import ablation_curve as ablation_curve
from jneuron.flax.linen import Linen as Linen
from jneuron.flax.paths import module_paths as module_paths
from jneuron.flax.rejuvenation import BNMLP as BNMLP
from jneuron.flax.rejuvenation import SRLinear as SRLinear
from jneuron.flax.rejuvenation import bn_scale_l1 as bn_scale_l1
from jneuron.flax.rejuvenation import dead_neurons as dead_neurons
from jneuron.flax.rejuvenation import rejuvenate as rejuvenate
from jneuron.flax.rejuvenation import utilization as utilization
from jneuron.flax.taps import Tap as Tap
from jneuron.models.onlstm import ONLSTM as ONLSTM
from jneuron.models.onlstm import ONLSTMCell as ONLSTMCell
from jneuron.models.onlstm import build_tree as build_tree
from jneuron.models.onlstm import cumax as cumax
