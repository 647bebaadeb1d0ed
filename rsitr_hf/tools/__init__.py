"""The remaining tools, each a command over the layers below: ``rsitr-convert`` (OpenAI-format checkpoints
into HF CLIP folders), ``rsitr-validate`` (a dataset's problems), ``rsitr-pos-tag`` and
``rsitr-train-tagger`` (POS tagging offline), ``rsitr-petl`` (the PETL comparison harness), and the UCM ties
figure (``python -m rsitr_hf.tools.ucm_ties``)."""
