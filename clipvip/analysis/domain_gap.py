"""``clipvip domain-gap``: the language-domain gap between text corpora, measured as in the paper.

Usage:
    clipvip domain-gap --model R/pretrained/clip --corpora '[
        {"name": "demo_pretrain subtitles", "role": "subtitles", "kind": "annotations",
         "paths": ["R/demo/annotations/demo_pretrain_train.jsonl"], "text_mode": "sample"},
        {"name": "demo_pretrain captions", "role": "captions", "kind": "captions",
         "paths": ["R/captions/demo_pretrain/captions.arrow"]},
        {"name": "demo_msrvtt", "role": "downstream", "kind": "annotations",
         "paths": ["R/demo/annotations/demo_msrvtt_train.jsonl"], "text_mode": "sample"}]' \
        --out-csv R/analysis/domain_gap.csv --out-md R/analysis/domain_gap.md --out-png R/analysis/domain_gap.png \
        --options '{"sample_size": 10000, "seeds": 5}'

Method: every text of a corpus (annotations: each clip's texts, ``read_annotations``; captions: each clip's
caption, ``read_captions``) is a sample. For a pair of corpora, n = min(sample_size, |A|, |B|) texts are drawn
from each (a seeded permutation per corpus, so a smaller n takes a prefix of the same draw), encoded with the
CLIP text encoder (L2-normalised), and all 2n features are clustered by scikit-learn's ``KMeans`` (k = 2). The
gap is ``normalized_mutual_info_score(corpus labels, cluster labels)``: ~0 = the encoder cannot tell the corpora
apart, 1 = they separate perfectly (a large gap). Mean ± std over ``seeds`` K-means seeds (0 .. seeds-1).

Pairs: every (subtitles | captions corpus) x (downstream corpus), and subtitles vs captions.
Outputs (written atomically): CSV (corpus_a, corpus_b, n_per_corpus, nmi_mean, nmi_std, nmi_per_seed, model),
a Markdown table and a bar chart with the std as error bars.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipvip.stage import (StageOptions, UserError, atomic_path, option, parse_options, resolve_device, stage_main,
                           write_text_atomic)

ROLES = ("subtitles", "captions", "downstream")


@dataclass
class DomainGapOptions(StageOptions):
    STAGE = "domain-gap"
    model: str | None = option(None, "CLIP folder or hub name for the text encoder; null = the workflow's base_model")
    sample_size: int = option(10000, "texts drawn per corpus (fewer when a corpus is smaller: both get the "
                              "smaller size)", minimum=2)
    seeds: int = option(5, "K-means seeds (random_state 0 .. seeds-1); mean and std over them", minimum=1)
    seed: int = option(0, "seed of the text sampling")
    n_init: int = option(10, "K-means restarts per seed (scikit-learn n_init)", minimum=1)
    batch_size: int = option(64, "texts per encoding batch", minimum=1)
    max_text_len: int | None = option(None, "text tokens incl. start/end; null = the encoder's maximum", minimum=8)
    device: str = option("auto", "auto (cuda when available) | cpu | cuda[:N]")


# ------------------------------------------------------------------------------------------------ the metric
def cluster_nmi(features_a: np.ndarray, features_b: np.ndarray, seeds: int = 5, n_init: int = 10) -> list[float]:
    """NMI between corpus labels and K-means (k = 2) cluster labels of the stacked features, one per seed."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    features = np.concatenate([np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)])
    labels = np.r_[np.zeros(len(features_a), int), np.ones(len(features_b), int)]
    scores = []
    for seed in range(seeds):
        clusters = KMeans(n_clusters=2, random_state=seed, n_init=n_init).fit_predict(features)
        scores.append(float(normalized_mutual_info_score(labels, clusters)))
    return scores


# --------------------------------------------------------------------------------------------------- corpora
def corpus_texts(spec: dict) -> list[str]:
    """The texts of one corpus spec (``kind`` annotations: every text of every clip; captions: every caption)."""
    from clipvip.data import read_annotations, read_captions

    paths = list(spec.get("paths") or [])
    if not paths:
        raise UserError(f"corpus {spec.get('name')!r}: no paths")
    for path in paths:
        if not Path(path).exists():
            raise UserError(f"corpus {spec.get('name')!r}: {path} does not exist")
    if spec.get("kind") == "captions":
        captions = read_captions(paths if len(paths) > 1 else paths[0])
        return [str(captions[clip_id]) for clip_id in captions]
    texts: list[str] = []
    for path in paths:
        records = read_annotations(path, spec.get("text_mode", "sample"))
        for i in range(len(records)):
            texts += [t for t in records[i]["texts"] if t and t.strip()]
    return texts


def load_text_encoder(model_name: str, device: str):
    """(model, tokenizer) for text encoding: a model folder with its tokenizer, or a hub name."""
    from clipvip.model import CLIPViPModel

    if Path(model_name).is_dir():
        from clipvip.data import load_tokenizer

        tokenizer = load_tokenizer(model_name)
    else:
        from transformers import CLIPTokenizerFast

        tokenizer = CLIPTokenizerFast.from_pretrained(model_name)
    model = CLIPViPModel.from_pretrained(model_name).to(device).eval()
    return model, tokenizer


class _Encoder:
    """Encodes each corpus's sampled texts once (the longest prefix any pair needs), then serves prefixes."""

    def __init__(self, model, tokenizer, max_text_len: int, batch_size: int, device: str):
        self.model, self.tokenizer = model, tokenizer
        self.max_text_len, self.batch_size, self.device = max_text_len, batch_size, device
        self.cache: dict[str, np.ndarray] = {}

    def features(self, name: str, texts: list[str], n: int) -> np.ndarray:
        have = self.cache.get(name)
        if have is None or len(have) < n:
            from clipvip.retrieval import encode_texts

            feats = encode_texts(self.model, self.tokenizer, texts[:n], self.max_text_len, self.batch_size,
                                 self.device, progress=False)
            self.cache[name] = feats.numpy()
        return self.cache[name][:n]


def pairs_of(specs: list[dict]) -> list[tuple[str, str]]:
    """(subtitles | captions) x downstream, then subtitles x captions."""
    by_role = {role: [s["name"] for s in specs if s.get("role") == role] for role in ROLES}
    pairs = [(a, b) for role in ("subtitles", "captions") for a in by_role[role] for b in by_role["downstream"]]
    pairs += [(a, b) for a in by_role["subtitles"] for b in by_role["captions"]]
    return pairs


def domain_gap(specs: list[dict], model, tokenizer, opts: DomainGapOptions, device: str = "cpu",
               model_name: str = "") -> list[dict]:
    """One result row per corpus pair (see the module docstring)."""
    names = [s.get("name") for s in specs]
    if len(set(names)) != len(names) or not all(names):
        raise UserError(f"--corpora: every corpus needs a unique name, got {names}")
    for spec in specs:
        if spec.get("role") not in ROLES:
            raise UserError(f"corpus {spec.get('name')!r}: role must be one of {', '.join(ROLES)}")
    pairs = pairs_of(specs)
    if not pairs:
        raise UserError("--corpora: no pair to compare (need a subtitles or captions corpus and a downstream "
                        "corpus, or subtitles and captions)")
    sampled: dict[str, list[str]] = {}
    for spec in specs:
        texts = corpus_texts(spec)
        if len(texts) < 2:
            raise UserError(f"corpus {spec['name']!r}: {len(texts)} text(s); at least 2 are needed")
        order = np.random.default_rng(opts.seed).permutation(len(texts))[:opts.sample_size]
        sampled[spec["name"]] = [texts[i] for i in order]
    max_len = opts.max_text_len or int(model.config.text_config.max_position_embeddings)
    encoder = _Encoder(model, tokenizer, max_len, opts.batch_size, device)
    # each corpus is encoded once: the longest prefix of its draw that any of its pairs needs
    need: dict[str, int] = {}
    for a, b in pairs:
        n = min(len(sampled[a]), len(sampled[b]))
        need[a], need[b] = max(need.get(a, 0), n), max(need.get(b, 0), n)
    rows = []
    for a, b in pairs:
        n = min(len(sampled[a]), len(sampled[b]))
        feats_a = encoder.features(a, sampled[a], need[a])[:n]
        feats_b = encoder.features(b, sampled[b], need[b])[:n]
        scores = cluster_nmi(feats_a, feats_b, seeds=opts.seeds, n_init=opts.n_init)
        rows.append({"corpus_a": a, "corpus_b": b, "n_per_corpus": n, "nmi_mean": float(np.mean(scores)),
                     "nmi_std": float(np.std(scores)), "nmi_per_seed": scores, "model": model_name})
    return rows


def captions_closer(rows: list[dict], specs: list[dict]) -> list[dict]:
    """Per downstream corpus, the paper's reading: are the auxiliary captions closer to it (lower NMI) than the
    subtitles? ``[{"downstream", "subtitles", "captions", "closer"}]`` for every (subtitles, captions) pair."""
    role = {s["name"]: s.get("role") for s in specs}
    nmi = {(r["corpus_a"], r["corpus_b"]): r["nmi_mean"] for r in rows}
    out = []
    for (a, b), value in nmi.items():
        if role.get(a) != "subtitles" or role.get(b) != "downstream":
            continue
        for c in (n for n, r in role.items() if r == "captions" and (n, b) in nmi):
            out.append({"downstream": b, "subtitles": value, "captions": nmi[(c, b)], "closer": nmi[(c, b)] < value})
    return out


# --------------------------------------------------------------------------------------------------- outputs
def write_outputs(rows: list[dict], out_csv: str, out_md: str | None, out_png: str | None,
                  reading: list[dict] | None = None) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["nmi_per_seed"] = frame["nmi_per_seed"].map(lambda s: " ".join(f"{v:.4f}" for v in s))
    with atomic_path(out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    if out_md:
        table = frame.assign(NMI=[f"{m:.3f} ± {s:.3f}" for m, s in zip(frame.nmi_mean, frame.nmi_std)])
        table = table[["corpus_a", "corpus_b", "n_per_corpus", "NMI"]]
        text = ("# Language-domain gap\n\nNMI between K-means (k = 2) clusters of CLIP text features and corpus "
                "labels (mean ± std over K-means seeds): high = the corpora are easy to tell apart = a large "
                f"gap. Text encoder: `{rows[0]['model']}`.\n\n" + table.to_markdown(index=False) + "\n")
        if reading:
            text += ("\nThe paper's reading (auxiliary captions close the gap: their NMI against the downstream "
                     "captions is lower than the subtitles'):\n\n" + "".join(
                         f"- {r['downstream']}: subtitles {r['subtitles']:.3f}, captions {r['captions']:.3f} -- "
                         f"{'holds' if r['closer'] else 'does NOT hold'}\n" for r in reading))
        write_text_atomic(out_md, text)
    if out_png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [f"{r['corpus_a']}\nvs {r['corpus_b']}" for r in rows]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(rows)), 3.6))
        ax.bar(range(len(rows)), [r["nmi_mean"] for r in rows], yerr=[r["nmi_std"] for r in rows], capsize=4,
               color="#4c72b0")
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_ylabel("NMI (higher = larger gap)")
        ax.set_ylim(0, 1.05)
        ax.set_title("Language-domain gap (K-means k=2 on CLIP text features)", fontsize=9)
        fig.tight_layout()
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)


def run(model_name: str, specs: list[dict], out_csv: str, out_md: str | None = None, out_png: str | None = None,
        options: dict | DomainGapOptions | None = None) -> list[dict]:
    opts = options if isinstance(options, DomainGapOptions) else DomainGapOptions.from_dict(options)
    model_name = opts.model or model_name
    if not model_name:
        raise UserError("--model (or options.model) is required")
    device = resolve_device(opts.device)
    model, tokenizer = load_text_encoder(model_name, device)
    rows = domain_gap(specs, model, tokenizer, opts, device, model_name=str(model_name))
    write_outputs(rows, out_csv, out_md, out_png, captions_closer(rows, specs))
    return rows


@stage_main("domain-gap")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipvip domain-gap", description=__doc__.splitlines()[0],
                                     epilog="options:\n" + DomainGapOptions.help_text(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="CLIP folder or hub name (options.model wins when set)")
    parser.add_argument("--corpora", required=True,
                        help="JSON list (or @file.json) of {name, role: subtitles|captions|downstream, "
                             "kind: annotations|captions, paths: [...], text_mode}")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", default=None)
    parser.add_argument("--out-png", default=None)
    parser.add_argument("--options", default=None, help="JSON object (or @file.json) of DomainGapOptions keys")
    args = parser.parse_args(argv)
    text = args.corpora
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        specs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--corpora: not valid JSON ({exc})") from None
    if not isinstance(specs, list):
        raise UserError("--corpora: expected a JSON list of corpus objects")
    started = time.perf_counter()
    rows = run(args.model, specs, args.out_csv, args.out_md, args.out_png,
               DomainGapOptions.from_dict(parse_options(args.options)))
    for r in rows:
        print(f"domain-gap: {r['corpus_a']} vs {r['corpus_b']} (n={r['n_per_corpus']} each): "
              f"NMI {r['nmi_mean']:.3f} ± {r['nmi_std']:.3f}")
    print(f"domain-gap: {len(rows)} pairs in {time.perf_counter() - started:.1f} s; wrote {args.out_csv}")
    return 0
