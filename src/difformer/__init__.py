"""difformer: embedding diffusion Transformers for conditional text generation (Gao et al., Difformer).

    import difformer
    model = difformer.load("runs/m30k/model")
    model.generate(["Ein Hund läuft im Schnee."], steps=20, length_beam=3)
"""
from difformer.errors import DifformerError

__version__ = "0.1.0"
__all__ = ["DifformerError", "load", "__version__"]


def load(path, device: str = "auto", precision: str = "auto", reranker=None):
    """Load a model directory of either kind; returns a Pipeline with `.generate(list_of_str, **options)`.

    device "auto" is CUDA when present, else the CPU; `reranker`: an autoregressive model directory that
    `selection="ar"` scores a Difformer's candidates with.
    """
    from difformer.generate import load as _load

    return _load(path, device=device, precision=precision, reranker=reranker)
