"""CLIP-ViP model: proxy-guided attention vs dense masked references, video tokens, ablation encoders,
HF-CLIP / own-folder / official-checkpoint loading, parameter groups. Tiny configs, CPU, a few seconds."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, CLIPModel, CLIPTokenizerFast, CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from clipvip.losses import LOSSES
from clipvip.model import VIDEO_ENCODERS, CLIPViPConfig, CLIPViPModel, load_official_checkpoint
from clipvip.model.tiny import build_tiny_clip
from clipvip.model.vip import layer_forward

IMG, PATCH = 32, 16  # L = 4 patches per frame
M = 4


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=IMG, patch_size=PATCH, hidden_size=32,
                           layers=2, heads=2, text_hidden=32, text_layers=2, projection_dim=24, seed=0)


def _video(b=2, t=3, seed=0):
    return torch.randn(b, t, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def _vip(clip_dir, **kw):
    return CLIPViPModel.from_pretrained(clip_dir, **kw).eval()


# ------------------------------------------------------------------------------ attention vs dense references
def _rule_mask(m, t, length):
    """The ViP rules written out token by token (True = may attend)."""
    n = m + t * length
    frame_of = [None] * m + [f for f in range(t) for _ in range(length)]
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            mask[i, j] = i < m or j < m or frame_of[i] == frame_of[j]
    return mask


def _dense_layer(layer, x, mask):
    """Pre-LN CLIP layer with plain matmul attention and an explicit boolean mask (None = no mask)."""
    attn = layer.self_attn
    b, n, d = x.shape
    h = layer.layer_norm1(x)
    def split(y):
        return y.view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)

    q, k, v = split(attn.q_proj(h)), split(attn.k_proj(h)), split(attn.v_proj(h))
    scores = q @ k.transpose(-1, -2) * attn.head_dim**-0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    x = x + attn.out_proj(out)
    return x + layer.mlp(layer.layer_norm2(x))


def _layer_and_input(t=3, length=5, width=32, heads=4):
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_attention_heads=heads)
    cfg._attn_implementation = "sdpa"
    layer = CLIPEncoderLayer(cfg).double()
    for p in layer.parameters():  # non-trivial LayerNorm/bias values
        p.data.normal_(0, 0.3)
    x = torch.randn(2, M + t * length, width, dtype=torch.float64, requires_grad=True)
    return layer, x


@pytest.mark.parametrize("mode", ["vip", "full"])
def test_structured_attention_equals_dense_masked_reference(mode):
    t, length = 3, 5
    layer, x = _layer_and_input(t, length)
    mask = _rule_mask(M, t, length) if mode == "vip" else None
    ours = layer_forward(layer, x, M, t, mode)
    ref = _dense_layer(layer, x, mask)
    assert (ours - ref).abs().max() <= 1e-10
    cot = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, [x, *layer.parameters()], cot)
    g_ref = torch.autograd.grad(ref, [x, *layer.parameters()], cot)
    for a, b in zip(g_ours, g_ref):
        assert (a - b).abs().max() <= 1e-10
    if mode == "vip":  # the mask really matters: unmasked attention differs
        assert (ours - _dense_layer(layer, x, None)).abs().max() > 1e-3
    else:  # and "full" is exactly HF's own layer forward without a mask
        assert (ours - layer(x, None)).abs().max() <= 1e-10


def test_vip_attention_float32_within_1e5():
    layer, x = _layer_and_input(t=4, length=6)
    layer, x = layer.float(), x.detach().float().requires_grad_(True)
    ours, ref = layer_forward(layer, x, M, 4), _dense_layer(layer, x, _rule_mask(M, 4, 6))
    assert (ours - ref).abs().max() <= 1e-5
    gx_ours, = torch.autograd.grad(ours.sum(), x)
    gx_ref, = torch.autograd.grad(ref.sum(), x)
    assert (gx_ours - gx_ref).abs().max() <= 1e-5


def test_whole_vip_tower_equals_hf_layers_with_additive_mask(clip_dir):
    model = _vip(clip_dir, temporal_init_std=0.02)
    x = _video(t=3)
    vm = model.vision_model
    tokens = vm.pre_layrnorm(vm.embeddings.video_embeddings(x))
    additive = torch.zeros(tokens.shape[1], tokens.shape[1]).masked_fill(~_rule_mask(M, 3, 4), float("-inf"))
    h = tokens
    for layer in vm.encoder.layers:  # HF's own CLIPEncoderLayer.forward with a dense mask
        h = layer(h, additive[None, None])
    ref = F.normalize(model.visual_projection(vm.post_layernorm(h[:, 0])), dim=-1)
    assert (model.encode_video(x) - ref).abs().max() <= 1e-5


# ------------------------------------------------------------------------------ video tokens
def test_token_layout_positions_and_temporal(clip_dir):
    model = _vip(clip_dir, temporal_init_std=0.5)
    emb = model.vision_model.embeddings
    x = _video(b=1, t=12)
    tokens = emb.video_embeddings(x)
    pos = emb.position_embedding.weight
    assert tokens.shape == (1, M + 12 * 4, 32)
    proxies = torch.cat([emb.class_embedding[None], emb.added_cls]) + pos[0]
    torch.testing.assert_close(tokens[0, :M], proxies)
    patches = emb.patch_embedding(x[0]).flatten(2).transpose(1, 2)  # [T, L, D]
    for t in (0, 5, 11):
        expected = patches[t] + pos[1:] + emb.temporal_embedding[0, t]
        torch.testing.assert_close(tokens[0, M + 4 * t : M + 4 * (t + 1)], expected)
    assert emb.added_cls.shape == (M - 1, 32) and emb.temporal_embedding.shape == (1, 12, 32)


def test_temporal_embedding_resizing(clip_dir):
    emb = _vip(clip_dir, temporal_init_std=0.5).vision_model.embeddings
    table = emb.temporal_embedding
    assert emb.temporal_for(12) is table  # identity at T = temporal_size ...
    same = F.interpolate(table.transpose(1, 2), size=12, mode="linear").transpose(1, 2)
    torch.testing.assert_close(same, table)  # ... which is also what interpolation gives there
    t32 = emb.temporal_for(32)
    torch.testing.assert_close(t32, F.interpolate(table.transpose(1, 2), size=32, mode="linear").transpose(1, 2))
    assert t32.shape == (1, 32, 32)
    # T = 1 (images): align_corners=False samples source coordinate 5.5 -> mean of rows 5 and 6
    torch.testing.assert_close(emb.temporal_for(1)[0, 0], (table[0, 5] + table[0, 6]) / 2)


def test_images_and_videos_in_one_training_step(clip_dir):
    model = CLIPViPModel.from_pretrained(clip_dir, temporal_init_std=0.02).train()
    tok = CLIPTokenizerFast.from_pretrained(clip_dir)
    texts = tok(["a dog runs", "a cat sleeps"], padding=True, return_tensors="pt")
    caps = tok(["a dog", "a cat on a sofa"], padding=True, return_tensors="pt")
    video = _video(t=5)
    feats = {
        "V": model.encode_video(video),
        "F": model.encode_video(video[:, 2:3]),  # middle frame as a 1-frame video, same tower
        "S": model.encode_text(**texts),
        "C": model.encode_text(**caps),
    }
    assert feats["F"].shape == feats["V"].shape == (2, 24)
    total, terms = LOSSES["vsc_fc"](feats, model.logit_scale)
    total.backward()
    emb = model.vision_model.embeddings
    assert set(terms) == {"L(V,S,C)", "L(F,C)"} and torch.isfinite(total)
    assert emb.added_cls.grad.abs().sum() > 0 and emb.temporal_embedding.grad.abs().sum() > 0
    assert model.logit_scale.grad is not None and model.text_projection.weight.grad.abs().sum() > 0


def test_zero_temporal_vip_is_order_blind_but_std_init_is_not(clip_dir):
    video = _video(b=1, t=4, seed=3)
    reversed_video = video.flip(1)
    zero = _vip(clip_dir)
    torch.testing.assert_close(zero.encode_video(video), zero.encode_video(reversed_video), atol=1e-5, rtol=0)
    learned = _vip(clip_dir, temporal_init_std=0.5)
    assert (learned.encode_video(video) - learned.encode_video(reversed_video)).abs().max() > 1e-4


# ------------------------------------------------------------------------------ ablation encoders
# vita keeps CLIP frozen (its forward refuses a trainable tower): tests/test_vita.py covers it.
@pytest.mark.parametrize("name", sorted(n for n in VIDEO_ENCODERS if n != "vita"))
def test_encoder_output_shape_norm_and_gradients(clip_dir, name):
    model = CLIPViPModel.from_pretrained(clip_dir, video_encoder=name, temporal_init_std=0.02).train()
    out = model.encode_video(_video(b=3, t=4))
    assert out.shape == (3, 24)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    out.pow(3).sum().backward()
    assert model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    own = dict(model.video_encoder.named_parameters())
    for pname, p in own.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    if name in ("vip", "full_attention"):
        assert model.vision_model.embeddings.added_cls.grad.abs().sum() > 0
    else:
        assert not hasattr(model.vision_model.embeddings, "added_cls")
    assert bool(own) == (name == "seqtransformer")


def test_meanpool_equals_averaged_hf_image_features(clip_dir):
    model = _vip(clip_dir, video_encoder="meanpool")
    hf = CLIPModel.from_pretrained(clip_dir).eval()
    video = _video(b=2, t=3)
    per_frame = [F.normalize(hf.get_image_features(pixel_values=video[:, t]).pooler_output, dim=-1) for t in range(3)]
    expected = F.normalize(torch.stack(per_frame, 1).mean(1), dim=-1)
    torch.testing.assert_close(model.encode_video(video), expected, atol=1e-5, rtol=0)


def test_full_attention_equals_unmasked_hf_layers(clip_dir):
    model = _vip(clip_dir, video_encoder="full_attention", temporal_init_std=0.02)
    vm, x = model.vision_model, _video(t=3)
    h = vm.pre_layrnorm(vm.embeddings.video_embeddings(x))
    for layer in vm.encoder.layers:
        h = layer(h, None)
    ref = F.normalize(model.visual_projection(vm.post_layernorm(h[:, 0])), dim=-1)
    torch.testing.assert_close(model.encode_video(x), ref, atol=1e-5, rtol=0)
    vip = _vip(clip_dir, temporal_init_std=0.02)
    vip.load_state_dict(model.state_dict())
    assert (vip.encode_video(x) - ref).abs().max() > 1e-4  # ViP's mask changes the result


def test_seqtransformer_clip4clip_semantics_and_text_init(tmp_path):
    d = build_tiny_clip(tmp_path, image_size=IMG, patch_size=PATCH, hidden_size=32, heads=2, text_hidden=24,
                        projection_dim=24, text_layers=3)
    model = _vip(d, video_encoder="seqtransformer", seq_transformer_layers=2)
    enc = model.video_encoder
    # CLIP4Clip init: first text layers + text position embeddings
    for mine, text_layer in zip(enc.transformer.layers, model.text_model.encoder.layers):
        for (n1, a), (n2, b) in zip(mine.state_dict().items(), text_layer.state_dict().items()):
            assert n1 == n2 and torch.equal(a, b)
    torch.testing.assert_close(enc.frame_position_embeddings.weight, model.text_model.embeddings.position_embedding.weight)
    hf = CLIPModel.from_pretrained(d).eval()
    video = _video(b=2, t=3)
    frames = torch.stack([hf.get_image_features(pixel_values=video[:, t]).pooler_output for t in range(3)], 1)
    h = frames + enc.frame_position_embeddings.weight[:3]
    for layer in enc.transformer.layers:
        h = _dense_layer(layer, h, None)  # CLIP4Clip's transformer: unmasked pre-LN CLIP blocks
    expected = F.normalize(F.normalize(h + frames, dim=-1).mean(1), dim=-1)
    torch.testing.assert_close(model.encode_video(video), expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ loading and saving
def test_from_plain_hf_clip(clip_dir):
    model, info = CLIPViPModel.from_pretrained(clip_dir, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.model_type == "clipvip" and model.config.video_encoder == "vip"
    hf = CLIPModel.from_pretrained(clip_dir).eval()
    tok = CLIPTokenizerFast.from_pretrained(clip_dir)
    batch = tok(["a photo of a cat", "two people dancing in the rain at night"], padding=True, return_tensors="pt")
    ref = F.normalize(hf.get_text_features(**batch).pooler_output, dim=-1)
    assert torch.equal(model.eval().encode_text(batch.input_ids, batch.attention_mask), ref)
    hf_sd = hf.state_dict()
    for name, value in model.state_dict().items():
        if name in hf_sd and name != "logit_scale":
            assert torch.equal(value, hf_sd[name]), name  # loaded CLIP weights are never re-initialised
    assert abs(hf.logit_scale.item() - 2.6592) < 1e-4 and abs(model.logit_scale.item() - math.log(100)) < 1e-6
    emb = model.vision_model.embeddings
    assert 0.6 < emb.added_cls.std().item() < 1.4  # standard normal, not HF's small init
    assert torch.count_nonzero(emb.temporal_embedding) == 0  # the paper's zero init
    std = CLIPViPModel.from_pretrained(clip_dir, temporal_init_std=0.02).vision_model.embeddings.temporal_embedding
    assert 0.01 < std.std().item() < 0.03


def test_save_load_round_trip(clip_dir, tmp_path):
    model = _vip(clip_dir, temporal_init_std=0.02, video_encoder="vip")
    with torch.no_grad():
        model.logit_scale.fill_(3.0)  # our folder keeps its value (no reset to ln 100)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    again, info = CLIPViPModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.config.temporal_init_std == 0.02 and again.logit_scale.item() == 3.0
    x = _video()
    assert torch.equal(model.encode_video(x), again.eval().encode_video(x))
    assert type(AutoModel.from_pretrained(tmp_path)) is CLIPViPModel


def _official_state_dict(model):
    """What the release looks like: clipmodel. prefix, fp16, persistent position_ids buffers."""
    sd = {f"clipmodel.{k}": v.half() for k, v in model.state_dict().items()}
    sd["clipmodel.vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    sd["clipmodel.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return sd


def test_official_checkpoint_loads_with_inferred_architecture(clip_dir, tmp_path):
    # Width 64 with one head follows CLIP's head_dim = 64 convention that shape inference relies on.
    d64 = build_tiny_clip(tmp_path / "clip64", image_size=IMG, patch_size=PATCH, hidden_size=64, layers=3, heads=1,
                          text_hidden=64, text_layers=2, projection_dim=24)
    source = _vip(d64, temporal_init_std=0.3)
    torch.save(_official_state_dict(source), tmp_path / "pretrain_clipvip.pt")
    model = load_official_checkpoint(tmp_path / "pretrain_clipvip.pt").eval()
    cfg, src = model.config, source.config
    assert (cfg.vision_config.hidden_size, cfg.vision_config.num_hidden_layers, cfg.vision_config.patch_size,
            cfg.vision_config.image_size, cfg.vision_config.num_attention_heads, cfg.text_config.vocab_size,
            cfg.text_config.max_position_embeddings, cfg.text_config.num_hidden_layers, cfg.projection_dim,
            cfg.num_proxies, cfg.temporal_size) == (64, 3, PATCH, IMG, 1, 49408, 77, 2, 24, 4, 12)
    assert cfg.vision_config.intermediate_size == src.vision_config.intermediate_size
    assert next(model.parameters()).dtype == torch.float32
    # Same outputs as the source model with fp16-rounded weights (i.e. only fp16 storage error).
    rounded = _vip(d64, temporal_init_std=0.3)
    rounded.load_state_dict({k: v.half().float() for k, v in source.state_dict().items()})
    x = _video()
    torch.testing.assert_close(model.encode_video(x), rounded.encode_video(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.encode_video(x), source.encode_video(x), atol=5e-3, rtol=0)
    tokens = torch.tensor([[49406, 320, 1125, 49407]])
    torch.testing.assert_close(model.encode_text(tokens), rounded.encode_text(tokens), atol=1e-6, rtol=0)
    assert model.logit_scale.item() == pytest.approx(math.log(100), abs=2e-3)  # the checkpoint's (fp16) value

    # With a 2-head model the architecture must come from its folder (base=), not from D/64.
    source2 = _vip(clip_dir, temporal_init_std=0.3)
    torch.save(_official_state_dict(source2), tmp_path / "two_heads.pt")
    again = load_official_checkpoint(tmp_path / "two_heads.pt", base=str(clip_dir)).eval()
    assert again.config.vision_config.num_attention_heads == 2
    torch.testing.assert_close(again.encode_video(x), source2.encode_video(x), atol=5e-3, rtol=0)


def test_official_checkpoint_key_errors(clip_dir, tmp_path):
    sd = _official_state_dict(_vip(clip_dir))
    del sd["clipmodel.vision_model.embeddings.added_cls"]
    sd["clipmodel.extra_head.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        load_official_checkpoint(tmp_path / "bad.pt", base=str(clip_dir))
    message = str(err.value)
    assert "missing (1): vision_model.embeddings.added_cls" in message
    assert "unexpected (1): extra_head.weight" in message


# ------------------------------------------------------------------------------ training helpers
def test_param_groups_and_logit_scale_clamp(clip_dir):
    model = CLIPViPModel.from_pretrained(clip_dir, video_encoder="vip")
    groups = {g["name"]: g for g in model.param_groups(weight_decay=0.2, lr=1e-3, temporal_lr_mult=10.0)}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {name: {names[id(p)] for p in g["params"]} for name, g in groups.items()}
    assert sum(map(len, members.values())) == len(names)  # each parameter exactly once
    assert members["temporal"] == {"vision_model.embeddings.temporal_embedding"}
    assert groups["temporal"]["lr"] == pytest.approx(1e-2) and groups["temporal"]["weight_decay"] == 0
    assert groups["decay"]["weight_decay"] == 0.2 and groups["no_decay"]["weight_decay"] == 0
    for n in ("logit_scale", "vision_model.embeddings.added_cls", "vision_model.embeddings.class_embedding",
              "vision_model.embeddings.position_embedding.weight", "text_model.embeddings.token_embedding.weight",
              "vision_model.pre_layrnorm.weight", "text_model.final_layer_norm.weight",
              "vision_model.encoder.layers.0.layer_norm1.weight", "text_model.encoder.layers.1.self_attn.q_proj.bias"):
        assert n in members["no_decay"], n
    for n in ("vision_model.encoder.layers.0.self_attn.q_proj.weight", "vision_model.embeddings.patch_embedding.weight",
              "visual_projection.weight", "text_projection.weight", "text_model.encoder.layers.0.mlp.fc1.weight"):
        assert n in members["decay"], n
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == pytest.approx(math.log(200))
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == 0.0


def test_gradient_checkpointing_gives_same_outputs_and_grads(clip_dir):
    model = CLIPViPModel.from_pretrained(clip_dir, temporal_init_std=0.02).train()
    x = _video()
    out = model.encode_video(x)
    ref = torch.autograd.grad(out.sum(), model.vision_model.embeddings.added_cls)[0]
    model.vision_model.encoder.gradient_checkpointing = True
    out2 = model.encode_video(x)
    got = torch.autograd.grad(out2.sum(), model.vision_model.embeddings.added_cls)[0]
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(ref, got)


def test_config_validation():
    with pytest.raises(Exception, match="video_encoder"):
        CLIPViPConfig(video_encoder="lstm")


def test_fresh_init_follows_hf_clip_scheme():
    """A from-config model initialises CLIP parts like HF CLIPModel (not the generic std=initializer_factor)."""
    from transformers import CLIPConfig

    vision = dict(hidden_size=64, num_attention_heads=2, image_size=IMG, patch_size=PATCH, num_hidden_layers=2)
    text = dict(hidden_size=64, num_attention_heads=2, num_hidden_layers=2)
    torch.manual_seed(0)
    ours = CLIPViPModel(CLIPViPConfig(vision_config=vision, text_config=text, projection_dim=32,
                                      video_encoder="seqtransformer", temporal_init_std=0.02))
    hf = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=32)).state_dict()
    sd = ours.state_dict()
    for name, ref in hf.items():
        if ref.numel() > 64 and name != "logit_scale":
            assert abs(sd[name].std() - ref.std()) < 0.25 * ref.std() + 1e-3, name
    enc = ours.video_encoder
    assert abs(enc.frame_position_embeddings.weight.std() - 0.02) < 0.005
    q_std = enc.transformer.layers[0].self_attn.q_proj.weight.std()
    assert abs(q_std - 32**-0.5 * (2 * 4) ** -0.5) < 0.01  # CLIP's depth-scaled init on the seqTransf width
    vip = CLIPViPModel(CLIPViPConfig(vision_config=vision, text_config=text, projection_dim=32, temporal_init_std=0.02))
    emb = vip.vision_model.embeddings
    assert 0.6 < emb.added_cls.std() < 1.4 and 0.01 < emb.temporal_embedding.std() < 0.03
    assert vip.logit_scale.item() == pytest.approx(math.log(100))


def test_convert_official_cli_writes_a_loadable_folder(clip_dir, tmp_path):
    from clipvip.cli import main as clipvip_main

    source = _vip(clip_dir, temporal_init_std=0.3).eval()
    torch.save(_official_state_dict(source), tmp_path / "release.pt")
    assert clipvip_main(["convert-official", "--checkpoint", str(tmp_path / "release.pt"), "--base", str(clip_dir),
                         "--tokenizer-from", str(clip_dir), "--out", str(tmp_path / "converted")]) == 0
    converted = CLIPViPModel.from_pretrained(tmp_path / "converted").eval()
    x = _video()
    with torch.no_grad():
        assert torch.allclose(converted.encode_video(x), source.encode_video(x), atol=5e-3)
    assert (tmp_path / "converted" / "tokenizer.json").exists()


# ------------------------------------------------------------------------------ tiny CLIP position init
def test_sincos_position_init_is_mae_table_and_only_touches_vision_positions(tmp_path):
    from clipvip.model.tiny import sincos_position_table

    grid, dim, scale, base = 2, 8, 2.0, 100.0
    # Written out per element: channel c < dim/2 encodes the column, the rest the row; sines then cosines.
    expected = torch.zeros(grid * grid, dim)
    for patch in range(grid * grid):
        row, col = divmod(patch, grid)
        for c in range(dim):
            pos = col if c < dim // 2 else row
            k = c % (dim // 4)
            trig = math.sin if (c % (dim // 2)) < dim // 4 else math.cos
            expected[patch, c] = scale * trig(pos / base ** (k / (dim // 4)))
    torch.testing.assert_close(sincos_position_table(grid, dim, scale, base), expected)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_table(grid, 30)

    kw = dict(image_size=IMG, patch_size=PATCH, hidden_size=32, text_hidden=32, projection_dim=24, seed=3)
    plain = CLIPModel.from_pretrained(build_tiny_clip(tmp_path / "plain", **kw)).state_dict()
    sincos = CLIPModel.from_pretrained(build_tiny_clip(tmp_path / "sincos", position_init="sincos",
                                                       position_scale=1.5, **kw)).state_dict()
    key = "vision_model.embeddings.position_embedding.weight"
    assert torch.equal(sincos[key][0], torch.zeros(32))  # the class token has no grid position
    torch.testing.assert_close(sincos[key][1:], sincos_position_table(IMG // PATCH, 32, 1.5))
    assert all(torch.equal(plain[k], sincos[k]) for k in plain if k != key)  # same seed, same other weights
    with pytest.raises(ValueError, match="position_init 'learned'"):
        build_tiny_clip(tmp_path / "bad", position_init="learned", **kw)


def test_tiny_clip_options_refuse_a_sincos_width_not_divisible_by_4():
    from clipvip.stage import OptionError
    from clipvip.tiny_models import TinyClipOptions

    with pytest.raises(OptionError, match=r"clip\.hidden_size.*not a multiple of 4"):
        TinyClipOptions.from_dict({"hidden_size": 30, "position_init": "sincos"}, "clip")
    assert TinyClipOptions.from_dict({"hidden_size": 30}, "clip").position_init == "random"


def test_tiny_train_options_refuse_more_repeated_stills_than_originals():
    from clipvip.stage import OptionError
    import numpy as np

    from clipvip.tiny_models import TinyTrainOptions, _still_batch

    with pytest.raises(OptionError, match=r"train\.clip_shape_pairs.*0\.3 \+ clip_shape_pairs 0\.25 > 0\.5"):
        TinyTrainOptions.from_dict({"clip_position_pairs": 0.3, "clip_shape_pairs": 0.25}, "train")
    assert TinyTrainOptions.from_dict({"clip_position_pairs": 0.3, "clip_shape_pairs": 0.2}, "train")
    with pytest.raises(ValueError, match="position share 0.5 \\+ shape share 0.25 > 0.5"):
        _still_batch(np.random.default_rng(0), 16, 64, 0.5, 0.25)
