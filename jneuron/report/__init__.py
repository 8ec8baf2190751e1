"""Reports: every result of every command in one self-contained ``report.html`` (plots embedded); the
figures of every result kind (:mod:`jneuron.report.figures`).

>>> import jneuron.report as jr
>>> sorted(n for n in dir(jr) if not n.startswith("_"))
['Report', 'crosslm', 'figures', 'heatmap', 'neuron_view', 'neuron_view_html', 'plot_similarity', 'plots', 'probing',
 'register']
"""

from jneuron.report import figures as figures
from jneuron.report._builder import Report as Report
from jneuron.report._builder import register as register
from jneuron.report.crosslm import add_crosslm as _add_crosslm
from jneuron.report.crosslm import is_crosslm as _is_crosslm
from jneuron.report.heatmap import plot_similarity as plot_similarity
from jneuron.report.neuron_view import neuron_view_html as neuron_view_html
from jneuron.report.probing import add_probing as _add_probing
from jneuron.report.probing import is_probing as _is_probing

register(_is_crosslm, _add_crosslm)  # the study-crosslm section (crosslm.json)
register(_is_probing, _add_probing)  # the study-probing section (probing.json)
