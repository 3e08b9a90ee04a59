"""Vita-CLIP: frozen towers, token layout per layer, any T, text prompts (CSC / shared / zero-shot), the
official-checkpoint converter against a reference forward on official-layout tensors, recognition loss and
metrics, the recognition data format and dataset. Tiny CLIPs on CPU; each test a few seconds."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPTokenizerFast

import clipvip.recognition as rec
from clipvip.model import CLIPViPConfig, CLIPViPModel
from clipvip.model.tiny import build_tiny_clip, tiny_clip_config
from clipvip.model.vita import (
    VITA_LOGIT_SCALE_INIT, VitaConfig, build_vita_model, check_frozen, class_text_features, freeze_for_vita,
    recognition_logits, vita_config, vita_param_groups, vita_trainable_names,
)
from clipvip.model.vita_official import load_vita_official_checkpoint
from clipvip.model.vita_text import context_prompt_ids, encode_text_embeddings, template_prompt_ids
from clipvip.registry import LOSSES, VIDEO_ENCODERS
from clipvip.stage import UserError

IMG, PATCH, WIDTH, HEADS, LAYERS = 32, 16, 32, 2, 2   # L = 4 patches per frame
L = (IMG // PATCH) ** 2
T = 3
G = 8
CLASSES = ["jumping", "playing_guitar", "eating cake", "swimming"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=IMG, patch_size=PATCH, hidden_size=WIDTH,
                           layers=LAYERS, heads=HEADS, text_hidden=32, text_layers=2, projection_dim=24, seed=0)


@pytest.fixture(scope="module")
def tokenizer(clip_dir):
    return CLIPTokenizerFast.from_pretrained(clip_dir)


def _vita(clip_dir, **vita):
    torch.manual_seed(0)
    return build_vita_model(clip_dir, class_names=CLASSES, vita={"num_frames": T, **vita})


def _video(b=2, t=T, seed=0, size=IMG):
    return torch.randn(b, t, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ freezing
def test_registered_and_trainable_set_is_exactly_the_vita_parameters(clip_dir):
    assert "vita" in VIDEO_ENCODERS and VIDEO_ENCODERS.get("vita").video_tokens is False
    model = _vita(clip_dir)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(vita_trainable_names(model))
    assert "logit_scale" in trainable and all(n == "logit_scale" or n.startswith("video_encoder.") for n in trainable)
    expected_suffixes = ["temporal_embedding", "global_prompts", "text.ctx", "layers.0.local_prompts",
                         "layers.0.cls_proj.weight", "layers.1.summary_ln.weight", "layers.1.summary_attn.q_proj.weight",
                         "layers.1.summary_attn.out_proj.bias"]
    for suffix in expected_suffixes:
        assert f"video_encoder.{suffix}" in trainable, suffix
    for tower in (model.vision_model, model.text_model, model.visual_projection, model.text_projection):
        assert not any(p.requires_grad for p in tower.parameters())
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    assert model.vision_model.embeddings.__class__.__name__ == "CLIPViPVisionEmbeddings"
    assert not hasattr(model.vision_model.embeddings, "added_cls")  # video_tokens=False: plain CLIP embeddings
    assert math.isclose(float(model.logit_scale.detach()), VITA_LOGIT_SCALE_INIT, rel_tol=1e-6)
    # official quirk: cls_proj frozen at init
    quirk = _vita(clip_dir, train_cls_proj=False)
    assert not any(".cls_proj." in n for n, p in quirk.named_parameters() if p.requires_grad)
    # inits follow the official code
    enc = model.video_encoder
    torch.set_grad_enabled(False)
    try:
        assert abs(float(enc.temporal_embedding.std()) - 0.02) < 0.01
        bound = math.sqrt(6 / (3 * PATCH * PATCH + WIDTH))
        assert float(enc.global_prompts.abs().max()) <= bound and float(enc.layers[0].local_prompts.abs().max()) <= bound
        assert float(enc.layers[0].summary_attn.q_proj.bias.abs().max()) == 0.0
    finally:
        torch.set_grad_enabled(True)


def _train_a_few_steps(model, tokenizer, steps=3):
    opt = torch.optim.AdamW(vita_param_groups(model, lr=1e-2, weight_decay=0.05))
    labels = torch.tensor([0, 2])
    for step in range(steps):
        text = class_text_features(model, tokenizer, CLASSES)
        video = model.encode_video(_video(seed=step))
        loss, terms = LOSSES["recognition_ce"]({"V": video, "K": text}, model.logit_scale, labels=labels)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
            assert frozen and all(p.grad is None for n, p in model.named_parameters() if n in set(frozen))
        opt.step()
        model.clamp_logit_scale_()


@pytest.mark.parametrize("train_cls_proj", [True, False])
def test_frozen_weights_are_bit_identical_after_training_steps(clip_dir, tokenizer, train_cls_proj):
    model = _vita(clip_dir, train_cls_proj=train_cls_proj).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train_a_few_steps(model, tokenizer)
    trainable = set(vita_trainable_names(model))
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            assert torch.equal(param, before[name]), f"{name} changed although frozen"
            assert param.grad is None
    cls_proj = model.video_encoder.layers[0].cls_proj.weight
    assert torch.equal(cls_proj, before["video_encoder.layers.0.cls_proj.weight"]) is (not train_cls_proj)


def test_unfrozen_tower_is_refused_with_autograd_on(clip_dir):
    model = _vita(clip_dir)
    model.vision_model.encoder.layers[0].mlp.fc1.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="freeze_for_vita"):
        model.encode_video(_video())
    with torch.no_grad():  # inference is fine
        model.encode_video(_video())
    freeze_for_vita(model)
    check_frozen(model)


# ------------------------------------------------------------------------------------------------ token layout
def _count_tokens(model, pixel_values):
    """Sequence length seen by each layer's attention (q_proj input) and MLP (mlp input)."""
    seen = {"attn": [], "mlp": []}
    hooks = []
    for layer in model.vision_model.encoder.layers:
        hooks.append(layer.self_attn.q_proj.register_forward_hook(lambda m, i, o: seen["attn"].append(i[0].shape[1])))
        hooks.append(layer.mlp.register_forward_hook(lambda m, i, o: seen["mlp"].append(i[0].shape[1])))
    try:
        with torch.no_grad():
            out = model.encode_video(pixel_values)
    finally:
        for h in hooks:
            h.remove()
    return seen, out


def test_token_counts_per_layer_tiny(clip_dir):
    model = _vita(clip_dir)
    seen, out = _count_tokens(model, _video())
    assert seen["attn"] == [1 + T + G + L + 1] * LAYERS   # [CLS | T local | 8 global | L patches | summary]
    assert seen["mlp"] == [1 + G + L] * LAYERS           # [CLS | 8 global | L patches]
    assert out.shape == (2, 24) and torch.allclose(out.norm(dim=-1), torch.ones(2))
    # ablations drop their tokens
    seen, _ = _count_tokens(_vita(clip_dir, use_local_prompts=False, use_summary_token=False), _video())
    assert seen["attn"] == [1 + G + L] * LAYERS


@pytest.mark.parametrize("patch, attn_tokens, mlp_tokens", [(16, 214, 205), (32, 67, 58)])
def test_token_counts_b16_b32_geometry(patch, attn_tokens, mlp_tokens):
    """ViT-B/16 and B/32 token layouts (224 px, T = 8, 8 global prompts) on a narrow, one-layer tower."""
    clip = tiny_clip_config(image_size=224, patch_size=patch, hidden_size=32, layers=1, heads=2, text_hidden=32,
                            text_layers=1, projection_dim=16)
    config = CLIPViPConfig.from_clip_config(clip, video_encoder="vita")
    config.vita = VitaConfig(num_frames=8, class_names=["a", "b"]).to_dict()
    torch.manual_seed(0)
    model = CLIPViPModel(config).eval()
    freeze_for_vita(model)
    seen, out = _count_tokens(model, _video(b=1, t=8, size=224))
    assert seen == {"attn": [attn_tokens], "mlp": [mlp_tokens]}
    assert out.shape == (1, 16)


# ------------------------------------------------------------------------------------------------ any T
def test_other_frame_counts_work_and_interpolate_nearest(clip_dir):
    model = _vita(clip_dir)
    enc = model.video_encoder
    for t in (1, 5, 6):
        seen, out = _count_tokens(model, _video(t=t))
        assert seen["attn"] == [1 + t + G + L + 1] * LAYERS and out.shape == (2, 24)
    rows = enc.temporal_for(6)
    assert torch.equal(rows, enc.temporal_embedding[[0, 0, 1, 1, 2, 2]])
    assert torch.equal(enc.layers[0].local_for(6), enc.layers[0].local_prompts[[0, 0, 1, 1, 2, 2]])


def test_regroup_like_official_splits_the_video_into_training_sized_groups(clip_dir):
    x = _video(b=1, t=6)
    y = x.clone()
    y[:, 3:] += 1.0  # perturb the second half of the video
    for regroup in (True, False):
        model = _vita(clip_dir, regroup_like_official=regroup)
        seen, _ = _count_tokens(model, x)
        assert seen["attn"] == [1 + (T if regroup else 6) + G + L + 1] * LAYERS
        with torch.no_grad():
            a = model.video_encoder.frame_embeddings(model, x)
            b = model.video_encoder.frame_embeddings(model, y)
        # officially frames 0-2 never meet frames 3-5 inside the layers
        assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) is regroup
    with pytest.raises(ValueError, match="regroup"):
        with torch.no_grad():
            _vita(clip_dir, regroup_like_official=True).encode_video(_video(b=1, t=4))


# ------------------------------------------------------------------------------------------------ text prompts
def test_csc_prompt_layout_and_shapes(clip_dir, tokenizer):
    model = _vita(clip_dir)
    enc = model.video_encoder
    assert enc.text.ctx.shape == (len(CLASSES), 8, 32)
    assert abs(float(enc.text.ctx.detach().std()) - 0.02) < 0.005
    ids, eos = context_prompt_ids(tokenizer, ["playing_guitar"], n_ctx=8)
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert tokens == ["<|startoftext|>"] + ["x</w>"] * 8 + ["playing</w>", "guitar</w>", ".</w>", "<|endoftext|>"]
    assert int(eos[0]) == len(tokens) - 1
    # same ids as the official tokenisation of "X X X X X X X X playing guitar."
    official = tokenizer("X X X X X X X X playing guitar.").input_ids
    assert ids[0].tolist() == official
    feats = class_text_features(model, tokenizer, CLASSES)
    assert feats.shape == (len(CLASSES), 24) and torch.allclose(feats.norm(dim=-1), torch.ones(len(CLASSES)))
    shared = _vita(clip_dir, csc=False)
    assert shared.video_encoder.text.ctx.shape == (8, 32)
    assert class_text_features(shared, tokenizer, CLASSES + ["unseen thing"]).shape == (5, 24)


def test_text_path_equals_clip_encode_text(clip_dir, tokenizer):
    """Our causal text forward on embeddings = HF CLIP's ``encode_text`` on the same prompts."""
    model = _vita(clip_dir)
    names = ["jumping", "a much longer class name here"]
    ids, eos = template_prompt_ids(tokenizer, names)
    with torch.no_grad():
        ours = encode_text_embeddings(model, model.text_model.embeddings.token_embedding(ids), eos)
        batch = tokenizer([f"a photo of a {n}." for n in names], padding=True, return_tensors="pt")
        theirs = model.encode_text(batch.input_ids, batch.attention_mask)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_zero_shot_on_unseen_classes_uses_no_trained_per_class_vector(clip_dir, tokenizer):
    model = _vita(clip_dir)
    names = ["jumping", "knitting", "riding a bike"]  # one training class, two unseen
    with torch.no_grad():
        before = class_text_features(model, tokenizer, names)
        forced = class_text_features(model, tokenizer, CLASSES, zero_shot=True)
        model.video_encoder.text.ctx.add_(torch.randn_like(model.video_encoder.text.ctx))  # "train" the contexts
        after = class_text_features(model, tokenizer, names)
        forced_after = class_text_features(model, tokenizer, CLASSES, zero_shot=True)
        batch = tokenizer([f"a photo of a {n}." for n in names[1:]], padding=True, return_tensors="pt")
        plain = model.encode_text(batch.input_ids, batch.attention_mask)
    assert torch.equal(before[1:], after[1:])              # unseen: unchanged
    assert not torch.allclose(before[0], after[0])         # seen: its own context
    assert torch.equal(forced, forced_after)               # zero_shot=True: never a per-class vector
    assert torch.allclose(after[1:], plain, atol=1e-5)     # = CLIP's plain prompt
    with pytest.raises(ValueError, match="not training classes"):
        class_text_features(model, tokenizer, names, zero_shot=False)
    # logits of unseen classes ignore the trained contexts too
    x = _video()
    with torch.no_grad():
        l1 = recognition_logits(model, x, class_text_features(model, tokenizer, names[1:]))
        model.video_encoder.text.ctx.zero_()
        l2 = recognition_logits(model, x, class_text_features(model, tokenizer, names[1:]))
    assert torch.equal(l1, l2)


def test_save_load_round_trip_and_rebuild(clip_dir, tokenizer, tmp_path):
    model = _vita(clip_dir, train_cls_proj=False).eval()
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["video_encoder"] == "vita" and saved["vita"]["class_names"] == CLASSES
    again = CLIPViPModel.from_pretrained(tmp_path / "m").eval()
    assert vita_config(again.config) == vita_config(model.config)
    x = _video()
    with torch.no_grad():
        a = recognition_logits(model, x, class_text_features(model, tokenizer, CLASSES))
        b = recognition_logits(again, x, class_text_features(again, tokenizer, CLASSES))
    assert torch.equal(a, b)
    rebuilt = build_vita_model(tmp_path / "m")
    assert {n for n, p in rebuilt.named_parameters() if p.requires_grad} == set(vita_trainable_names(rebuilt))
    assert torch.equal(rebuilt.logit_scale, model.logit_scale)
    with pytest.raises(ValueError, match="vita config"):
        build_vita_model(tmp_path / "m", class_names=["other"])


# ------------------------------------------------------------------------------------------------ converter
V_WIDTH, V_HEADS, V_LAYERS, T_WIDTH, T_HEADS, T_LAYERS, EMBED, N_CTX, N_GLOBAL = 32, 2, 2, 32, 2, 2, 24, 4, 2


def _official_state_dict(num_classes, num_frames=T, seed=0):
    """Random tensors in the exact layout of the official VitaCLIP.state_dict() (tiny geometry)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix):
        return {f"{prefix}.weight": 1 + r(V_WIDTH if prefix.startswith("visual") else T_WIDTH),
                f"{prefix}.bias": r(V_WIDTH if prefix.startswith("visual") else T_WIDTH)}

    def lin(prefix, out_dim, in_dim):
        return {f"{prefix}.weight": r(out_dim, in_dim, scale=in_dim ** -0.5), f"{prefix}.bias": r(out_dim)}

    d, w = V_WIDTH, T_WIDTH
    sd = {
        "logit_scale": torch.tensor(math.log(1 / 0.07)) + 0.3,
        "visual.cls_token": r(d), "visual.pos_embed": r(L + 1, d), "visual.time_embed": r(num_frames, d),
        "visual.proj": r(d, EMBED, scale=d ** -0.5), "visual.global_prompts": r(V_LAYERS, N_GLOBAL, d),
        "visual.patch_embed.proj.weight": r(d, 3, PATCH, PATCH, scale=0.02), "visual.patch_embed.proj.bias": r(d),
        **ln("visual.ln_pre"), **ln("visual.ln_post"),
        "textual.token_embedding.weight": r(49408, w), "textual.positional_embedding": r(77, w),
        "textual.text_projection": r(w, EMBED, scale=w ** -0.5), **ln("textual.ln_final"),
        "prompt_learner.ctx": r(num_classes, N_CTX, w, scale=0.02),
    }
    for i in range(V_LAYERS):
        p = f"visual.blocks.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd.update(lin(f"{p}.attn.{name}", d, d))
            sd.update(lin(f"{p}.summary_attn_layer.{name}", d, d))
        sd.update(lin(f"{p}.mlp.fc1", 4 * d, d))
        sd.update(lin(f"{p}.mlp.fc2", d, 4 * d))
        sd.update(lin(f"{p}.cls_proj", d, d))
        sd.update({**ln(f"{p}.norm1"), **ln(f"{p}.norm2"), **ln(f"{p}.summary_ln")})
        sd[f"{p}.local_prompts"] = r(1, num_frames, d)
    for i in range(T_LAYERS):
        p = f"textual.transformer.resblocks.{i}"
        sd[f"{p}.attn.in_proj_weight"] = r(3 * w, w, scale=w ** -0.5)
        sd[f"{p}.attn.in_proj_bias"] = r(3 * w)
        sd.update(lin(f"{p}.attn.out_proj", w, w))
        sd.update(lin(f"{p}.mlp.c_fc", 4 * w, w))
        sd.update(lin(f"{p}.mlp.c_proj", w, 4 * w))
        sd.update({**ln(f"{p}.ln_1"), **ln(f"{p}.ln_2")})
    return sd


def _official_tokenize(tokenizer, texts, length=77):
    out = torch.zeros(len(texts), length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = tokenizer(text).input_ids  # [SOT] … [EOT], the official SimpleTokenizer's ids
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def _add_prompt_buffers(sd, tokenizer, names):
    """The official TextPromptLearner's token_prefix / token_suffix buffers (from the frozen embedding)."""
    prompts = [" ".join(["X"] * N_CTX) + " " + n.replace("_", " ") + "." for n in names]
    tokenized = _official_tokenize(tokenizer, prompts)
    emb = F.embedding(tokenized, sd["textual.token_embedding.weight"])
    sd["prompt_learner.token_prefix"] = emb[:, :1].clone()
    sd["prompt_learner.token_suffix"] = emb[:, 1 + N_CTX:].clone()
    return tokenized


def _ref_ln(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps=1e-5)


def _ref_lin(x, sd, prefix):
    return F.linear(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])


def _ref_attention(sd, prefix, q, k, v, heads):
    """The official generalised Attention (einsum over 'nqhc,nkhc->nqkh', softmax over keys)."""
    q, k, v = _ref_lin(q, sd, f"{prefix}.q_proj"), _ref_lin(k, sd, f"{prefix}.k_proj"), _ref_lin(v, sd, f"{prefix}.v_proj")
    n, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    c = q.shape[-1] // heads
    q, k, v = q.view(n, lq, heads, c), k.view(n, lk, heads, c), v.view(n, lk, heads, c)
    aff = torch.einsum("nqhc,nkhc->nqkh", q / (c ** 0.5), k).softmax(dim=-2)
    mix = torch.einsum("nqlh,nlhc->nqhc", aff, v)
    return _ref_lin(mix.flatten(-2), sd, f"{prefix}.out_proj")


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _ref_block(sd, i, x, num_frames):
    p = f"visual.blocks.{i}"
    bt, _, c = x.shape
    b = bt // num_frames
    cls_proj = _ref_lin(x[:, 0, :].view(b, num_frames, c), sd, f"{p}.cls_proj")
    s_norm = _ref_ln(cls_proj, sd, f"{p}.summary_ln")
    summary = cls_proj + _ref_attention(sd, f"{p}.summary_attn_layer", s_norm, s_norm, s_norm, V_HEADS)
    x = torch.cat([x, summary.view(bt, 1, c)], dim=1)
    local = sd[f"{p}.local_prompts"].expand(b, -1, -1) + cls_proj
    local = local.repeat_interleave(repeats=num_frames, dim=0)
    x = torch.cat((x[:, :1, :], local, x[:, 1:, :]), dim=1)
    x_norm = _ref_ln(x, sd, f"{p}.norm1")
    x = x + _ref_attention(sd, f"{p}.attn", x_norm, x_norm, x_norm, V_HEADS)
    x = x[:, :-1, :]
    x = torch.cat((x[:, :1, :], x[:, local.shape[1] + 1:, :]), dim=1)
    return x + _ref_lin(_quick_gelu(_ref_lin(_ref_ln(x, sd, f"{p}.norm2"), sd, f"{p}.mlp.fc1")), sd, f"{p}.mlp.fc2")


def _ref_visual(sd, x, train_frames):
    """Official CLIPVisionEncoder.forward on official tensors; x [B, C, T, H, W]."""
    b, _, t, _, _ = x.shape
    x = x.permute(0, 2, 1, 3, 4).flatten(0, 1)
    x = F.conv2d(x, sd["visual.patch_embed.proj.weight"], sd["visual.patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.cls_token"].view(1, 1, -1).repeat(x.size(0), 1, 1), x], dim=1)
    x = x + sd["visual.pos_embed"]
    time = sd["visual.time_embed"]
    if t != time.shape[0]:
        time = F.interpolate(time.unsqueeze(0).transpose(1, 2), size=t, mode="nearest").transpose(1, 2).squeeze(0)
    n, m = x.shape[1], x.shape[2]
    x = (x.view(b, t, n, m).transpose(1, 2) + time).transpose(1, 2).reshape(b * t, n, m)  # '(b t) n m -> (b n) t m'
    x = _ref_ln(x, sd, "visual.ln_pre")
    for i in range(V_LAYERS):
        gp = sd["visual.global_prompts"][i].expand(b * t, -1, -1)
        x = torch.cat((x[:, :1, :], gp, x[:, 1:, :]), dim=1)
        x = _ref_block(sd, i, x, train_frames)  # the official blocks always group by the training T
        x = torch.cat((x[:, :1, :], x[:, N_GLOBAL + 1:, :]), dim=1)
    cls = _ref_ln(x[:, 0, :], sd, "visual.ln_post") @ sd["visual.proj"]
    return cls.view(b, t, -1).mean(dim=1)


def _ref_textual(sd, tokenized):
    """Official CLIPTextEncoder.forward(prompt_learner(), tokenized_prompts), with torch's MultiheadAttention."""
    ctx = sd["prompt_learner.ctx"]
    prompts = torch.cat([sd["prompt_learner.token_prefix"], ctx, sd["prompt_learner.token_suffix"]], dim=1)
    x = (prompts + sd["textual.positional_embedding"]).permute(1, 0, 2)
    mask = torch.empty(77, 77).fill_(float("-inf")).triu_(1)
    for i in range(T_LAYERS):
        p = f"textual.transformer.resblocks.{i}"
        mha = torch.nn.MultiheadAttention(T_WIDTH, T_HEADS)
        mha.load_state_dict({"in_proj_weight": sd[f"{p}.attn.in_proj_weight"], "in_proj_bias": sd[f"{p}.attn.in_proj_bias"],
                             "out_proj.weight": sd[f"{p}.attn.out_proj.weight"], "out_proj.bias": sd[f"{p}.attn.out_proj.bias"]})
        h = _ref_ln(x, sd, f"{p}.ln_1")
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        x = x + _ref_lin(_quick_gelu(_ref_lin(_ref_ln(x, sd, f"{p}.ln_2"), sd, f"{p}.mlp.c_fc")), sd, f"{p}.mlp.c_proj")
    x = _ref_ln(x.permute(1, 0, 2), sd, "textual.ln_final")
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ sd["textual.text_projection"]


def _ref_logits(sd, x, tokenized, train_frames=T):
    v = _ref_visual(sd, x, train_frames)
    t = _ref_textual(sd, tokenized)
    v, t = v / v.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
    return sd["logit_scale"].exp() * v @ t.t()


def test_official_checkpoint_converts_to_the_same_class_logits(tokenizer):
    sd = _official_state_dict(len(CLASSES))
    tokenized = _add_prompt_buffers(sd, tokenizer, CLASSES)
    x = torch.randn(2, 3, T, IMG, IMG, generator=torch.Generator().manual_seed(1))  # official [B, C, T, H, W]
    with torch.no_grad():
        expected = _ref_logits(sd, x, tokenized)
    release = {"model": {f"module.{k}": v for k, v in sd.items()}, "next_step": 30000}
    model = load_vita_official_checkpoint(release, class_names=CLASSES, vision_heads=V_HEADS, text_heads=T_HEADS)
    v = vita_config(model.config)
    assert (v.num_frames, v.num_global_prompts, v.text_num_context, v.csc, v.train_cls_proj) == (T, N_GLOBAL, N_CTX, True, False)
    with torch.no_grad():
        ours = recognition_logits(model, x.permute(0, 2, 1, 3, 4), class_text_features(model, tokenizer, CLASSES))
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-4), (ours, expected)
    # a different test T: official regrouping reproduced by regroup_like_official
    x6 = torch.randn(1, 3, 2 * T, IMG, IMG, generator=torch.Generator().manual_seed(2))
    regroup = load_vita_official_checkpoint(sd, class_names=CLASSES, vision_heads=V_HEADS, text_heads=T_HEADS,
                                            regroup_like_official=True)
    with torch.no_grad():
        expected6 = _ref_logits(sd, x6, tokenized)
        ours6 = recognition_logits(regroup, x6.permute(0, 2, 1, 3, 4), class_text_features(regroup, tokenizer, CLASSES))
    assert torch.allclose(ours6, expected6, rtol=1e-4, atol=1e-4)


def test_converter_refuses_missing_unexpected_and_misshaped_keys(tokenizer, tmp_path):
    sd = _official_state_dict(len(CLASSES))
    _add_prompt_buffers(sd, tokenizer, CLASSES)
    kw = dict(class_names=CLASSES, vision_heads=V_HEADS, text_heads=T_HEADS)
    broken = dict(sd)
    del broken["visual.blocks.1.summary_attn_layer.k_proj.weight"]
    broken["visual.blocks.0.extra_thing"] = torch.zeros(3)
    with pytest.raises(UserError) as err:
        load_vita_official_checkpoint(broken, **kw)
    assert "video_encoder.layers.1.summary_attn.k_proj.weight" in str(err.value)
    assert "visual.blocks.0.extra_thing" in str(err.value) and "missing" in str(err.value)
    misshaped = dict(sd)
    misshaped["visual.blocks.0.cls_proj.weight"] = torch.zeros(V_WIDTH, V_WIDTH + 1)
    with pytest.raises(UserError, match="shape mismatch"):
        load_vita_official_checkpoint(misshaped, **kw)
    with pytest.raises(UserError, match="class names"):
        load_vita_official_checkpoint(sd, class_names=CLASSES[:2], vision_heads=V_HEADS, text_heads=T_HEADS)
    path = tmp_path / "vita.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, path)
    assert load_vita_official_checkpoint(path, **kw).config.video_encoder == "vita"


# ------------------------------------------------------------------------------------------------ loss + metrics
def test_recognition_loss_matches_cross_entropy():
    assert "recognition_ce" in LOSSES
    v = F.normalize(torch.randn(4, 8), dim=-1)
    k = F.normalize(torch.randn(5, 8), dim=-1)
    labels = torch.tensor([0, 4, 2, 2])
    scale = torch.tensor(math.log(1 / 0.07))
    total, terms = LOSSES["recognition_ce"]({"V": v, "K": k}, scale, labels=labels)
    assert torch.allclose(total, F.cross_entropy(scale.exp() * v @ k.T, labels))
    assert set(terms) == {"CE(V,K)"}
    same, _ = LOSSES["recognition_ce"]({"V": v, "K": k, "label": labels}, scale)
    assert torch.equal(same, total)
    with pytest.raises(KeyError, match="labels"):
        LOSSES["recognition_ce"]({"V": v, "K": k}, scale)


def test_topk_and_multi_view_metrics_on_hand_made_logits():
    scores = np.array([
        [9, 1, 2, 3, 4, 5, 6],   # label 0: rank 1
        [1, 2, 9, 8, 7, 6, 5],   # label 1: rank 6 (five classes score higher)
        [5, 6, 7, 8, 9, 1, 2],   # label 2: rank 3
        [3, 3, 3, 3, 3, 3, 3],   # label 3: all tied -> worst rank 7 (ties count against)
    ], dtype=float)
    labels = np.array([0, 1, 2, 3])
    assert rec.true_class_ranks(scores, labels).tolist() == [1, 6, 3, 7]
    assert rec.topk_accuracy(scores, labels) == {"top1": 25.0, "top5": 50.0}
    # averaging probabilities (official) differs from averaging logits: view 1 is confident and wrong
    views = np.array([[[10.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]])  # [N=1, V=3, C=3]
    probs = rec.average_views(views)
    assert probs.shape == (1, 3) and np.allclose(probs.sum(), 1.0)
    assert probs.argmax() == 0 and views.mean(axis=1).argmax() == 0
    expected = np.mean([np.exp(v - v.max()) / np.exp(v - v.max()).sum() for v in views[0]], axis=0)
    assert np.allclose(probs[0], expected)
    assert rec.multi_view_accuracy(views, np.array([1]), ks=(1, 2)) == {"top1": 0.0, "top2": 100.0}
    with pytest.raises(ValueError):
        rec.topk_accuracy(scores, np.array([0, 1, 2, 7]))


# ------------------------------------------------------------------------------------------------ data format
def test_class_list_and_annotation_errors_name_file_and_line(tmp_path):
    from clipvip.data.recognition import RecognitionDataError, read_class_list, read_recognition_annotations

    classes = tmp_path / "classes.txt"
    classes.write_text("jumping\nplaying guitar\n eating cake \n\n")
    names = read_class_list(classes)
    assert names == ["jumping", "playing guitar", "eating cake"]
    for text, message in [("a\n\nb\n", "classes.txt:2: empty class name"), ("a\nb\na\n", "classes.txt:3: class 'a' repeats line 1"),
                          ("\n\n", "empty")]:
        bad = tmp_path / "classes.txt"
        bad.write_text(text)
        with pytest.raises(RecognitionDataError, match=message):
            read_class_list(bad)
    anns = tmp_path / "train.jsonl"
    anns.write_text('{"clip_id": "a", "label": "jumping"}\n\n{"clip_id": "b", "label": " eating cake"}\n')
    assert read_recognition_annotations(anns, names) == [
        {"clip_id": "a", "label": "jumping", "label_index": 0}, {"clip_id": "b", "label": "eating cake", "label_index": 2}]
    cases = [
        ('{"clip_id": "a", "label": "playing guitr"}', "train.jsonl:2: unknown label 'playing guitr'.*did you mean 'playing guitar'"),
        ('{"clip_id": "a", "label": "  "}', "train.jsonl:2: empty label"),
        ('{"clip_id": "a"}', "train.jsonl:2: missing key 'label'"),
        ('{"clip_id": "a", "label": 3}', "train.jsonl:2: 'label' must be a class name"),
        ('{"label": "jumping"}', "train.jsonl:2: missing key 'clip_id'"),
        ('{"clip_id": "x", "label": "jumping"}\n{"clip_id": "x", "label": "jumping"}', "train.jsonl:3: clip 'x' already labelled on line 2"),
        ("not json", "train.jsonl:2: not valid JSON"),
    ]
    for line, message in cases:
        anns.write_text('{"clip_id": "ok", "label": "jumping"}\n' + line + "\n")
        with pytest.raises(RecognitionDataError, match=message):
            read_recognition_annotations(anns, names)
    assert issubclass(RecognitionDataError, UserError)


def test_official_frame_sampling_formulas():
    from clipvip.data.recognition import stride_test_views, stride_train_indices, uniform_test_views

    views = stride_test_views(300, 8, 16, 3)
    span = 7 * 16 + 1
    assert views.shape == (3, 8)
    assert [int(v[0]) for v in views] == [0, round((300 - span) / 2), 300 - span]
    assert (np.diff(views, axis=1) == 16).all()
    short = stride_test_views(100, 8, 16, 3)  # padded with the last frame: every view starts at 0
    assert short.tolist() == [[0, 16, 32, 48, 64, 80, 96, 99]] * 3
    rng = np.random.default_rng(0)
    starts = {int(stride_train_indices(300, 8, 16, rng)[0]) for _ in range(200)}
    assert min(starts) >= 0 and max(starts) < 300 - 16 * 7 and len(starts) > 50
    assert stride_train_indices(50, 8, 16, rng).tolist() == [0, 16, 32, 48, 49, 49, 49, 49]
    assert uniform_test_views(40, 4, 1).tolist() == [[0, 13, 26, 39]]
    assert uniform_test_views(40, 4, 2).tolist() == [[2, 12, 22, 32], [7, 17, 27, 37]]


# ------------------------------------------------------------------------------------------------ dataset
LEVEL0, STEP = 20, 3
CLIPS = {"c60": 60, "c25": 25}


def _indexed_frames(n, h=40, w=48):
    return np.stack([np.full((h, w, 3), LEVEL0 + STEP * i) for i in range(n)]).astype(np.uint8)


def _decoded(pixels):
    return [int(round((float(m) - LEVEL0) / STEP)) for m in pixels.double().mean(dim=(1, 2, 3))]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from clipvip.cli import main as cli
    from clipvip.data import FrameIndex
    from clipvip.video_io import write_video

    root = tmp_path_factory.mktemp("rstore")
    (root / "videos").mkdir()
    for clip_id, n in CLIPS.items():
        write_video(root / "videos" / f"{clip_id}.mp4", _indexed_frames(n), fps=8)
    (root / "ids.txt").write_text("\n".join(CLIPS) + "\n")
    assert cli(["frames", "--video-dir", str(root / "videos"), "--ids", str(root / "ids.txt"), "--out",
                str(root / "00000.h5"), "--failures", str(root / "00000.failures.tsv"),
                "--options", json.dumps({"short_side": IMG, "num_frames": 4, "pool_size": 64})]) == 0
    assert cli(["frames-index", "--shards", str(root / "00000.h5"), "--out", str(root / "index.json")]) == 0
    return FrameIndex(root / "index.json")


def test_recognition_dataset_items_and_views(store):
    from clipvip.data.recognition import RecognitionDataset, collate_recognition

    anns = [{"clip_id": "c60", "label": "jumping", "label_index": 0},
            {"clip_id": "c25", "label": "swimming", "label_index": 3},
            {"clip_id": "absent", "label": "jumping", "label_index": 0}]
    train = RecognitionDataset(store, anns, num_frames=4, image_size=IMG, train=True, sampling_rate=4, seed=1)
    assert len(train) == 2 and train.missing == ["absent"]
    item = train[0]
    assert item["pixel_values"].shape == (4, 3, IMG, IMG) and item["pixel_values"].dtype == torch.uint8
    assert item["label"] == 0 and item["clip_id"] == "c60"
    got = _decoded(item["pixel_values"])
    assert got == train.wanted_indices("c60", 0).tolist() and np.all(np.diff(got) == 4)  # every frame stored: exact
    assert _decoded(train[0]["pixel_values"]) == got  # deterministic per (seed, epoch, index)
    test = RecognitionDataset(store, anns, num_frames=4, image_size=IMG, train=False, num_views=3, sampling_rate=4)
    item = test[1]
    assert item["pixel_values"].shape == (3, 4, 3, IMG, IMG) and item["label"] == 3
    assert [_decoded(v) for v in item["pixel_values"]] == [[0, 4, 8, 12], [6, 10, 14, 18], [12, 16, 20, 24]]
    batch = collate_recognition([test[0], test[1]])
    assert batch["pixel_values"].shape == (2, 3, 4, 3, IMG, IMG) and batch["label"].tolist() == [0, 3]
    uniform = RecognitionDataset(store, anns, num_frames=4, image_size=IMG, train=False, sampling="uniform")
    assert _decoded(uniform[0]["pixel_values"]) == np.linspace(0, 59, 4).astype(int).tolist()


def test_evaluate_recognition_end_to_end(store, clip_dir, tokenizer):
    from clipvip.data.recognition import RecognitionDataset

    model = _vita(clip_dir)
    anns = [{"clip_id": "c60", "label": "jumping", "label_index": 0},
            {"clip_id": "c25", "label": "swimming", "label_index": 3}]
    ds = RecognitionDataset(store, anns, num_frames=T, image_size=IMG, train=False, num_views=3, sampling_rate=4)
    result = rec.evaluate_recognition(model, tokenizer, ds, CLASSES, batch_size=2, progress=False)
    assert set(result) == {"top1", "top5", "num_clips", "num_views", "num_classes"}
    assert result["num_clips"] == 2 and result["num_views"] == 3 and result["top5"] == 100.0
    zs = rec.evaluate_recognition(model, tokenizer, ds, ["a", "b", "c", "swimming"], zero_shot=True, progress=False)
    assert zs["num_classes"] == 4


def test_gradient_checkpointing_gives_the_same_gradients(clip_dir, tokenizer):
    grads = []
    for ckpt in (False, True):
        model = _vita(clip_dir).train()
        if ckpt:
            model.activation_checkpointing_enable()
            assert model.vision_model.encoder.gradient_checkpointing
        logits = recognition_logits(model, _video(), class_text_features(model, tokenizer, CLASSES))
        F.cross_entropy(logits, torch.tensor([1, 3])).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_recognition_step_trains_only_the_vita_parameters(clip_dir, tokenizer, store):
    from clipvip.data import to_device
    from clipvip.data.recognition import RecognitionDataset, collate_recognition

    model = _vita(clip_dir).train()
    anns = [{"clip_id": "c60", "label": "jumping", "label_index": 0},
            {"clip_id": "c25", "label": "swimming", "label_index": 3}]
    ds = RecognitionDataset(store, anns, num_frames=T, image_size=IMG, train=True, sampling_rate=4)
    batch = to_device(collate_recognition([ds[0], ds[1]]), "cpu")
    step = rec.RecognitionStep(model, tokenizer, CLASSES)
    loss, terms = step(batch)
    assert set(terms) == {"CE(V,K)", "acc1"} and loss.ndim == 0
    loss.backward()
    with_grad = {n for n, p in step.named_parameters() if p.grad is not None}
    assert with_grad == {f"model.{n}" for n in vita_trainable_names(model)}
