"""rsitr_hf: parameter-efficient transfer learning for remote sensing image-text retrieval on the HF stack."""

__version__ = "0.1.0"
