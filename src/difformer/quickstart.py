"""`difformer quickstart`: a toy translation task generated locally, trained and scored in minutes on CPU."""
from __future__ import annotations

import shutil
from pathlib import Path

from difformer.config import load_config
from difformer.data.prepare import format_summary, prepare
from difformer.data.toy import make_numbers_corpus
from difformer.generate import load
from difformer.metrics import corpus_bleu
from difformer.train import train


def quickstart(workdir: str | Path, minutes: float = 5.0, seed: int = 1) -> float:
    """Generate French->English number words, prepare, train `quickstart.yaml`, print examples and test BLEU."""
    work = Path(workdir)
    corpus, data, run = work / "corpus", work / "data", work / "run"
    print(f"[1/4] generating the number-words corpus in {corpus}")
    make_numbers_corpus(corpus, seed=seed)
    print(f"[2/4] preparing it into {data}")
    info = prepare(source_lang="fr", target_lang="en", trainpref=str(corpus / "train"),
                   validpref=str(corpus / "valid"), testpref=str(corpus / "test"), destdir=str(data),
                   vocab_size=500, force=True, seed=seed)
    print(format_summary(info))
    print(f"[3/4] training for at most {minutes:g} minutes into {run}")
    shutil.rmtree(run, ignore_errors=True)
    cfg = load_config("quickstart", [f"train.data={data}", f"train.save_dir={run}",
                                     f"train.max_minutes={minutes}", f"train.seed={seed}"])
    model_dir = train(cfg)
    print(f"[4/4] decoding the test set with {model_dir}")
    pipe = load(model_dir)
    sources = (corpus / "test.fr").read_text(encoding="utf-8").splitlines()
    refs = (corpus / "test.en").read_text(encoding="utf-8").splitlines()
    hyps = pipe.generate(sources)
    for src, hyp, ref in list(zip(sources, hyps, refs))[:5]:
        print(f"  source    {src}\n  output    {hyp}\n  reference {ref}\n")
    bleu = corpus_bleu(hyps, refs)
    print(f"{pipe.decode_config().describe()} | {bleu.signature}")
    print(f"test BLEU = {bleu.score:.1f}")
    return bleu.score
