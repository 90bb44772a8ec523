"""Experimental ways of building FastQwen3's one-token decode step: measured on a GPU, and left out of the library.

Each experiment is built on qwen3_lib.fast (chapter 10a): `ExperimentalFastQwen3` is a FastQwen3 whose decoder-layer
function, or whole step, is swapped for an experimental one when it is built. What each one tries:

  layer="reduce"     every matrix-vector product of a layer written as a broadcast product and a float32 sum, so
                     that the compiler generates the kernel itself and can pull the neighbours into it (the RMSNorm
                     before it, SiLU(gate) * up before down_proj, the residual addition after o_proj / down_proj).
                     The layer's arithmetic is still the library's: layer_step runs unchanged under a
                     TorchFunctionMode (Rewrite) that answers its F.linear calls with the sum.
  layer="fold"       "reduce", with each RMSNorm computed inside the kernel of the product that reads it
                     (_norm_matvec), RoPE as one indexed read instead of slices and a concatenation
                     (_rotary_gather), the key norm and rotation over the whole (keys, values) block, and gate and
                     up as two products of one shape. Its own arithmetic, written to the compiler's fusion rules.
  attention="math"   attention written out (scores, softmax, weighted sum) instead of PyTorch's fused kernel, so
                     that the compiler may fuse it with its neighbours; with "reduce" or "fold" its two products
                     are broadcast sums too.
  prefetch=True      while layer i runs, a second CUDA stream reads the weights its later products and the next
                     layer's q/k/v product will need into the L2 cache (l2_prefetch).
  compile_step=True  the whole step (embedding, 28 layers, norm, head) compiled as one graph and replayed as a CUDA
                     graph by the compiler (mode "reduce-overhead"), instead of one layer compiled for all 28 and
                     the step recorded by hand.

They combine with the library's own options (compile_layers=, cuda_graph=). benchmarks/compare_variants.py times,
checks and profiles them; benchmarks/NOTES.md says what they measured and why they are not in the library.
"""
import torch, torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from qwen3_lib import fast
from qwen3_lib.fast import FastQwen3, layer_step, attend_grouped

def compiled(fn, cudagraphs: bool = False):
    """fn compiled as qwen3_lib.fast compiles its pieces with compile_layers=True (one graph per shape,
    coordinate-descent tuning); cudagraphs: also replayed as the compiler's CUDA graph (mode "reduce-overhead")."""
    return fast.compiled(fn, **({"triton.cudagraphs": True} if cudagraphs else {}))

def reduce_product(x, w):
    "x @ w.T as a broadcast product and a float32 sum: x (..., in), w (out, in) -> (..., out) in x's dtype."
    return (x.float()[..., None, :] * w.float()).sum(-1).to(x.dtype)

def math_attention(q, k, v, mask, reduce: bool = False):
    """F.scaled_dot_product_attention(q, k, v, attn_mask=mask) written out, scores and softmax in float32.
    q (B, H, T, hd), k and v (B, H, S, hd), mask additive (T, S). reduce: the two products as broadcast sums."""
    scale = q.shape[-1] ** -0.5
    if reduce:
        scores = (q.float()[..., :, None, :] * k.float()[..., None, :, :]).sum(-1) * scale        # (B, H, T, S)
        p = (scores + mask).softmax(-1)
        return (p[..., None] * v.float()[..., None, :, :]).sum(-2).to(v.dtype)                    # (B, H, T, hd)
    scores = (q @ k.transpose(-2, -1)).float() * scale
    return (scores + mask).softmax(-1).to(v.dtype) @ v

class Rewrite(TorchFunctionMode):
    """Inside this mode, the products and the attention of the library's code are computed another way:
    products="reduce" answers F.linear (and torch.mv, which chapter 03's linear uses for one 16-bit row on a CPU)
    with reduce_product; attention="math" answers the masked F.scaled_dot_product_attention of the fast path's
    attend_grouped with math_attention. torch.compile traces through the mode, so the compiled graph holds the
    rewritten operations and nothing of the mode itself."""
    def __init__(self, products: str = "library", attention: str = "sdpa"):
        super().__init__()
        self.products, self.attention = products, attention

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.products == "reduce" and func is F.linear and len(args) == 2 and not kwargs:
            return reduce_product(*args)
        if self.products == "reduce" and func is torch.ops.qwen3_lib.mv:
            w, x = args
            return reduce_product(x, w)
        if self.attention == "math" and func is F.scaled_dot_product_attention and set(kwargs) == {"attn_mask"}:
            return math_attention(*args, kwargs["attn_mask"], reduce=self.products == "reduce")
        return func(*args, **kwargs)

def _rms_gain(x, gain, eps: float):
    "Chapter 01's RMSNorm of x (..., n) by its last axis: statistics in float32, cast back, then the gain."
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * gain

def _norm_matvec(x, gain, w, eps: float):
    """RMSNorm(x) @ w.T, written so that the norm's statistic is a sum over the product's own (out, in) shape: the
    input row is broadcast to every output first, so every output recomputes the mean square of the inputs it reads
    anyway, and a compiler computes statistic and product in one kernel (as it does a softmax's max and sum)."""
    xs = x[..., None, :].expand(*x.shape[:-1], w.shape[0], x.shape[-1])            # (..., out, in)
    return (_rms_gain(xs, gain, eps).float() * w.float()).sum(-1).to(x.dtype)

def _rotary_gather(x, cos, sin):
    """Chapter 02's apply_rotary with rotate_half as one indexed read, x[..., (j + hd/2) % hd] times -1 for the first
    half, instead of slicing and concatenating: the same numbers, and the rotation keeps x's shape (a concatenation
    is a buffer, and a kernel, of its own)."""
    hd = x.shape[-1]
    j = torch.arange(hd, device=x.device)
    sign = torch.where(j < hd // 2, -1.0, 1.0).to(x.dtype)
    return x * cos.to(x.dtype) + x[..., (j + hd // 2) % hd] * sign * sin.to(x.dtype)

def fold_layer_step(layer, qkv, gate_up, x, kv, cos, sin, mask, pos):
    """layer_step's contract (chapter 10a) with its arithmetic written for the compiler: every product a generated
    sum with the RMSNorm before it inside (_norm_matvec); the key norm and RoPE over all 2 Hkv heads of the new
    (keys, values) block, kept for the keys by torch.where, so that norm, rotation and cache write share one shape;
    gate and up as two products of one shape, so that SiLU(gate) * up is computed where they are."""
    a, n1, n2 = layer.self_attn, layer.input_layernorm, layer.post_attention_layernorm
    Hq, Hkv, hd = a.n_heads, a.n_kv_heads, a.head_dim
    B, T, _ = x.shape
    q, new = _norm_matvec(x, n1.weight, qkv, n1.eps).split([Hq * hd, 2 * Hkv * hd], -1)
    q = _rotary_gather(a.q_norm(q.view(B, T, Hq, hd)).transpose(1, 2), cos, sin)            # (B, Hq, T, hd)
    new = new.view(B, T, 2 * Hkv, hd).transpose(1, 2)                                        # (B, 2 Hkv, T, hd)
    is_key = torch.arange(2 * Hkv, device=x.device)[:, None, None] < Hkv
    kv.index_copy_(2, pos, torch.where(is_key, _rotary_gather(a.k_norm(new), cos, sin), new))
    y = attend_grouped(q, kv[:, :Hkv], kv[:, Hkv:], mask)                                    # (B, Hq, T, hd)
    x = x + reduce_product(y.transpose(1, 2).reshape(B, T, Hq * hd), a.o_proj.weight)
    n = gate_up.shape[0] // 2
    gate, up = (_norm_matvec(x, n2.weight, gate_up[i * n:(i + 1) * n], n2.eps) for i in (0, 1))
    return x + reduce_product(F.silu(gate) * up, layer.mlp.down_proj.weight)

LAYERS = ("library", "reduce", "fold")
ATTENTION = ("sdpa", "math")

def layer_function(layer: str = "library", attention: str = "sdpa"):
    """The decoder-layer function of a step, with layer_step's arguments: the library's layer_step itself, or it
    (layer="reduce") or fold_layer_step (layer="fold") run under Rewrite."""
    if layer not in LAYERS: raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
    if attention not in ATTENTION: raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    if layer == "library" and attention == "sdpa":
        return layer_step
    inner = fold_layer_step if layer == "fold" else layer_step
    products = "library" if layer == "library" else "reduce"
    def rewritten_layer_step(*args):
        with Rewrite(products, attention):
            return inner(*args)
    return rewritten_layer_step

def l2_prefetch(fast, inner):
    """inner (a layer function) with an L2 prefetch around it. A generated product reads its 4-13 MB at under half
    the copy bandwidth, much of it starting up and draining. While layer i runs, a second stream reads layer i's
    o_proj, gate/up and down_proj weights and layer i+1's q/k/v weights (31.5 MB for Qwen3-0.6B; the H200's L2 cache
    holds 60 MB, an H100's 50), one 8-byte load per 32-byte sector, so that the products find them in L2. The prefetch
    only reads; the main stream waits for it at the next layer's start and after the last layer (CUDA-graph capture
    needs every fork joined). On a CPU the reads run inline: a check of the bookkeeping, not a speed-up."""
    layers = fast.model.model.layers
    sectors = lambda t: t.detach().reshape(-1).view(torch.int64)[::4]       # every 4th 8-byte word: one per 32 bytes
    plan = {}
    for i, (layer, (qkv, gate_up)) in enumerate(zip(layers, fast.fused)):
        reads = [sectors(t) for t in (layer.self_attn.o_proj.weight, gate_up, layer.mlp.down_proj.weight)]
        plan[id(layer)] = (i, reads + ([sectors(fast.fused[i + 1][0])] if i + 1 < len(layers) else []))
    dev = fast.kv_cache.device
    sink = torch.zeros((), dtype=torch.int64, device=dev)
    side = torch.cuda.Stream(dev) if dev.type == "cuda" else None
    def layer_with_prefetch(layer, *args):
        i, reads = plan[id(layer)]
        if side is None:
            for r in reads: torch.sum(r, 0, out=sink)
            return inner(layer, *args)
        main = torch.cuda.current_stream(dev)
        if i: main.wait_stream(side)                 # the previous layer's prefetch has finished (it long has)
        side.wait_stream(main)                       # start with this layer, not before (in a capture: fork here)
        with torch.cuda.stream(side):
            for r in reads: torch.sum(r, 0, out=sink)
        out = inner(layer, *args)
        if i == len(layers) - 1: main.wait_stream(side)    # join before the step ends
        return out
    return layer_with_prefetch

class ExperimentalFastQwen3(FastQwen3):
    """A FastQwen3 (same cache, prefill, forward, generate) whose step runs an experiment, chosen when it is built:
    layer ("library", "reduce", "fold"), attention ("sdpa", "math"), prefetch, compile_step; see the module's
    docstring. With compile_layers the experimental layer function is compiled as the library compiles its own.
    compile_step compiles the whole step over all max_seq_len positions (no windows: a compilation takes a minute)
    and, on CUDA, replays it as the compiler's CUDA graph; it excludes compile_layers, cuda_graph and prefetch."""
    def __init__(self, model, max_seq_len: int, batch_size: int = 1, *, layer: str = "library",
                 attention: str = "sdpa", prefetch: bool = False, compile_step: bool = False,
                 compile_layers: bool = False, cuda_graph: bool = False):
        fn = layer_function(layer, attention)                                  # checks layer and attention
        if compile_step and (compile_layers or cuda_graph or prefetch):
            raise ValueError("compile_step compiles the whole step and records its own CUDA graph: leave "
                             "compile_layers, cuda_graph and prefetch False with it")
        super().__init__(model, max_seq_len, batch_size, compile_layers=compile_layers, cuda_graph=cuda_graph)
        self.layer, self.attention, self.prefetch, self.compile_step = layer, attention, prefetch, compile_step
        if fn is not layer_step:
            self._layer = compiled(fn) if compile_layers else fn
        if prefetch:
            self._layer = l2_prefetch(self, self._layer)
        if compile_step:
            for t in (self.kv_cache, self.positions, *(t for pair in self.fused for t in pair)):
                torch._dynamo.mark_static_address(t)        # fixed addresses: the graph reads them in place
            self._whole_step = compiled(self._step, cudagraphs=self.kv_cache.is_cuda)

    def step(self, ids, pos, length: int = None):
        "FastQwen3.step; with compile_step, the compiled whole step over all max_seq_len positions (length unused)."
        if self.compile_step:
            return self._whole_step(ids, pos, self.max_seq_len)
        return super().step(ids, pos, length)

def variant_options(name: str, device) -> dict:
    """ExperimentalFastQwen3 options from a variant name: words joined by "+", each one of
    eager (nothing), graph (cuda_graph), layers (compile_layers), step (compile_step), reduce, fold (layer=),
    math (attention=), prefetch. "layers+graph+fold" is the library's fastest way with the fold layer."""
    words = {"eager": {}, "graph": dict(cuda_graph=True), "layers": dict(compile_layers=True),
             "step": dict(compile_step=True), "reduce": dict(layer="reduce"), "fold": dict(layer="fold"),
             "math": dict(attention="math"), "prefetch": dict(prefetch=True)}
    opts = {}
    for w in name.split("+"):
        if w not in words: raise ValueError(f"unknown word {w!r} in variant {name!r}; words: {', '.join(words)}")
        opts.update(words[w])
    if opts.get("cuda_graph") and torch.device(device).type != "cuda":
        raise ValueError(f"variant {name!r} records a CUDA graph, which needs a CUDA device, not {device}")
    return opts

def build(model, name: str, max_seq_len: int, batch_size: int = 1) -> ExperimentalFastQwen3:
    "The variant `name` (see variant_options) of a decode step for model."
    return ExperimentalFastQwen3(model, max_seq_len, batch_size,
                                 **variant_options(name, next(model.parameters()).device))
