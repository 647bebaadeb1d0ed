"""The Hub Space widget of this metric (run by a Space; needs gradio, which rsitr_hf does not install)."""

import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("rsitr_retrieval.py")
launch_gradio_widget(module)
