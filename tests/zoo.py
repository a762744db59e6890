"""The test zoo: real architectures with seeded random weights (nothing is downloaded)."""

from __future__ import annotations

import torch

TORCHVISION = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
               "densenet121", "convnext_tiny", "regnet_y_400mf", "shufflenet_v2_x1_0",
               "squeezenet1_1", "vgg11_bn", "inception_v3", "vit_b_16", "swin_t"]
TIMM = ["resnet18", "mobilenetv3_small_050", "efficientnet_b0", "convnext_atto"]
TRANSFORMERS = ["bert", "gpt2"]
# segmentation (dict outputs "out"/"aux", ASPP's pooled branch, LR-ASPP's gated skip) and video
# (3-D convolutions; R(2+1)D's factored 1x3x3 / 3x1x1 pairs)
SEGMENTATION = ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "fcn_resnet50"]
VIDEO = ["r3d_18", "mc3_18", "r2plus1d_18"]
CNNS = {f"tv_{n}" for n in TORCHVISION if n not in ("vit_b_16", "swin_t")} | {
    f"timm_{n}" for n in TIMM}


def _randomize_zeros(model: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialised matrices (ViT's head) would make every output 0 and every equivalence
    check vacuous; give them small random values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


class _HFWrapper(torch.nn.Module):
    """Plain-tensor interface around a transformers model (last hidden state out)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class LogitsWrapper(torch.nn.Module):
    """A causal LM as ``input_ids -> logits`` (no cache)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False).logits


class Seq2Seq(torch.nn.Module):
    """An encoder-decoder as ``(input_ids, decoder_input_ids) -> decoder last hidden state``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, decoder_input_ids):
        return self.model(input_ids=input_ids, decoder_input_ids=decoder_input_ids,
                          use_cache=False).last_hidden_state


class AudioWrapper(torch.nn.Module):
    """An audio encoder as ``waveform or log-mel features -> last hidden state``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).last_hidden_state


def build(name: str) -> tuple[torch.nn.Module, tuple]:
    torch.manual_seed(0)
    kind, _, arch = name.partition("_")
    if kind == "tv":
        import torchvision

        kw = {"aux_logits": False, "init_weights": False} if arch == "inception_v3" else {}
        m = getattr(torchvision.models, arch)(weights=None, **kw)
        size = 299 if arch == "inception_v3" else 224
        x = (torch.randn(1, 3, size, size),)
    elif kind == "seg":
        from torchvision.models import segmentation

        kw = {"aux_loss": True} if arch != "lraspp_mobilenet_v3_large" else {}
        m = getattr(segmentation, arch)(weights=None, weights_backbone=None, **kw)
        x = (torch.randn(1, 3, 64, 64),)
    elif kind == "video":
        from torchvision.models import video

        m = getattr(video, arch)(weights=None)
        x = (torch.randn(1, 3, 4, 32, 32),)
    elif kind == "timm":
        import timm

        m = timm.create_model(arch, pretrained=False)
        x = (torch.randn(1, 3, 224, 224),)
    elif kind == "hf":
        import transformers as tf

        if arch == "bert":
            cfg = tf.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=512, vocab_size=1000)
            m = _HFWrapper(tf.BertModel(cfg))
        elif arch == "llama":  # grouped-query attention (6 query heads on 2 key/value heads),
            # rotary embeddings, SwiGLU, RMSNorm, tied input/output embeddings: SmolLM2's kind
            cfg = tf.LlamaConfig(hidden_size=192, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=6, num_key_value_heads=2, vocab_size=1000,
                                 tie_word_embeddings=True, max_position_embeddings=256)
            m = LogitsWrapper(tf.LlamaForCausalLM(cfg))
        else:
            cfg = tf.GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=1000, use_cache=False)
            m = _HFWrapper(tf.GPT2Model(cfg))
        ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
        x = (ids,) if arch == "llama" else (ids, torch.ones(1, 16, dtype=torch.int64))
    else:
        raise KeyError(name)
    return _randomize_zeros(m.eval()), x


ALL = [f"tv_{n}" for n in TORCHVISION] + [f"timm_{n}" for n in TIMM] + [
    f"hf_{n}" for n in TRANSFORMERS] + [f"seg_{n}" for n in SEGMENTATION] + [
    f"video_{n}" for n in VIDEO]
