"""What the numba backend compiles, but for the large-step lanes (``lanes.py``): the gate
arithmetic (forward, backward, and one step's for generation), whole time loops for small
steps, the one-hot gather and scatter, softmax cross-entropy, and the Adam update.
``layer.py`` calls these around BLAS; ``reference/cell.py`` is the readable reference both
are held to. Letters: T time, B batch, D input, H hidden, G = 4H gates.

``lanes.py`` inlines the gate arithmetic from here; the cache of every compiled function is
stamped with all of the ``fast`` package's files (``jit.cached_njit``), so an edit here
recompiles it there too.

Vectorisable sigmoid and tanh. A call to libm's ``exp`` in a numba loop stays a scalar call, one
element at a time (numba vectorises it only with Intel's SVML, which pip's llvmlite does not
link). Written out as arithmetic, exp runs 4 (float64) or 8 (float32) elements per instruction:

    exp(x) = 2^k · (1 + r·q(r)),  k = round(x / ln 2),  r = x − k·ln 2,  |r| ≤ ln2 / 2,
    q(r) = (exp(r) − 1) / r = Σ_n r^n / (n + 1)!   (13 terms for float64, 7 for float32)

with 2^k built from its bits and each a·b + c one ``fma`` (numba does not fuse them itself; one
rounding, and half the instructions on the dependency chain). Per element: sigmoid 3.1 ns in
float64 where libm's exp alone takes 40, 0.76 ns in float32, tanh 0.94; fma saves a quarter to
a third. Largest error against NumPy: 4e-16 in float64, 1.6e-7 in float32 (where 7 terms do
as well as 13).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

from lstm_scratch.fast.jit import cached_njit
from lstm_scratch.fast.kernel import add_into, full_width_product


@intrinsic
def _power_of_two(typingctx, k):
    """2^k for an integral-valued float k in the normal range, by writing the exponent field."""
    if k not in (types.float64, types.float32):
        return None
    bits, mantissa, bias = (64, 52, 1023) if k == types.float64 else (32, 23, 127)

    def codegen(context, builder, signature, args):
        integer = ir.IntType(bits)
        k_int = builder.fptosi(args[0], integer)
        biased = builder.add(k_int, ir.Constant(integer, bias))
        field = builder.shl(biased, ir.Constant(integer, mantissa))
        return builder.bitcast(field, args[0].type)

    return k(k), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a·b + c, rounded once (the processor's fused multiply-add); floats of one type."""
    if not (a == b == c and a in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        scalar = args[0].type
        function_type = ir.FunctionType(scalar, [scalar] * 3)
        name = f"llvm.fma.{scalar.intrinsic_name}"
        function = cgutils.get_or_insert_function(builder.module, function_type, name)
        return builder.call(function, args)

    return a(a, b, c), codegen


def like(z, value):
    """``value`` as a number of z's float type, so float32 arithmetic stays float32 (a Python float
    literal is float64 in numba and would silently promote it). Compiled code only."""
    raise NotImplementedError


@overload(like, inline="always")
def _like(z, value):
    kind = np.float32 if z == types.float32 else np.float64
    return lambda z, value: kind(value)


def reduction_constants(z):
    """(lowest x, ln2_hi, ln2_lo) in z's type. lowest: the smallest x for which 2^round(x/ln 2)
    is a normal number. ln 2 = ln2_hi + ln2_lo to twice the type's precision, ln2_hi with
    trailing zero bits so that k·ln2_hi is exact (fdlibm's split, and its float32 version)."""
    raise NotImplementedError


@overload(reduction_constants, inline="always")
def _reduction_constants(z):
    if z == types.float32:
        values = (np.float32(-87.0), np.float32(6.9313812256e-01), np.float32(9.0580006145e-06))
    else:
        values = (-708.0, 6.93147180369123816490e-01, 1.90821492927058770002e-10)
    return lambda z: values


INV_LN2 = 1 / math.log(2)
# q's Taylor coefficients 1/(n+1)!, highest first. The first term left out, r^N / (N+1)! with
# |r| ≤ ln2/2, is below half an ulp at N = 13 for float64 and N = 7 for float32.
Q64 = tuple(1 / math.factorial(n + 1) for n in reversed(range(13)))
Q32 = tuple(np.float32(1 / math.factorial(n + 1)) for n in reversed(range(7)))


def polynomial(z):
    """q's coefficients for z's float type: 13 for float64, 7 for float32. Compiled code only."""
    raise NotImplementedError


@overload(polynomial, inline="always")
def _polynomial(z):
    values = Q32 if z == types.float32 else Q64
    return lambda z: values


@cached_njit(inline="always", error_model="numpy")
def estrin7(r, coefficients):
    """c0 + c1 r + … + c6 r⁶ for coefficients (c6, …, c0) by Estrin's scheme: three multiply-adds
    deep where Horner's is seven, so more elements are in flight at once (see activate_units)."""
    c6, c5, c4, c3 = coefficients[0], coefficients[1], coefficients[2], coefficients[3]
    c2, c1, c0 = coefficients[4], coefficients[5], coefficients[6]  # (indexed, not unpacked:
    r2 = r * r  # exp_parts types this for float64's 13 coefficients too, then never runs it)
    low = fma(fma(c3, r, c2), r2, fma(c1, r, c0))  # c0 + c1 r + c2 r² + c3 r³
    high = fma(c6, r2, fma(c5, r, c4))  # c4 + c5 r + c6 r²
    return fma(high, r2 * r2, low)


@cached_njit(inline="always", error_model="numpy")
def exp_parts(x):
    """(s, m) with exp(x) = s + s·m and expm1(x) = (s − 1) + s·m, each exact to the last few bits
    (expm1 too: near 0, k = 0 and s = 1 exactly). For x ≤ 0."""
    lowest, ln2_hi, ln2_lo = reduction_constants(x)
    x = max(x, lowest)
    k = np.floor(fma(x, like(x, INV_LN2), like(x, 0.5)))  # round to nearest
    r = fma(k, -ln2_lo, fma(k, -ln2_hi, x))  # x − k·ln 2 in two parts, |r| ≤ ln2/2
    coefficients = polynomial(x)
    if len(coefficients) == 7:  # float32: Estrin's scheme (largest relative error over the gates
        q = estrin7(r, coefficients)  # against float64: 1.8e-7, Horner's 1.6e-7)
    else:  # float64: Horner's; a constant tuple, so LLVM unrolls it
        q = like(x, 0.0)
        for coefficient in coefficients:
            q = fma(q, r, coefficient)
    return _power_of_two(k), r * q


@cached_njit(inline="always", error_model="numpy")
def sigmoid(z):
    """σ(z) from e = exp(−|z|): 1/(1+e) for z ≥ 0, e/(1+e) below. No overflow."""
    s, m = exp_parts(-abs(z))
    e = fma(s, m, s)
    one = like(z, 1.0)
    return (e if z < 0 else one) / (one + e)


@cached_njit(inline="always", error_model="numpy")
def tanh(z):
    """tanh(z) = −m / (2 + m) with m = expm1(−2|z|), sign restored: exact near 0 as well."""
    s, r = exp_parts(like(z, -2.0) * abs(z))
    m = fma(s, r, s - like(z, 1.0))
    t = -m / (like(z, 2.0) + m)
    return t if z >= 0 else -t


@cached_njit(inline="always", error_model="numpy")
def activate(z, c_prev, c, h, tanh_c):
    """One row of one step: z (G,) arrives holding the pre-activations and leaves holding
    i, f, g, o; writes c, h, tanh(c) (H,) from c_prev (H,)."""
    hidden = c.size
    zi, zf = z[:hidden], z[hidden : 2 * hidden]
    zg, zo = z[2 * hidden : 3 * hidden], z[3 * hidden :]
    activate_units(zi, zf, zg, zo, c_prev, c, h, tanh_c)


@cached_njit(inline="always", error_model="numpy")
def activate_units(zi, zf, zg, zo, c_prev, c, h, tanh_c):
    """``activate`` for some hidden units, each gate's pre-activations (n,) apart.

    Short loops over contiguous memory, each indexed by its counter alone, so that LLVM
    vectorises every one (an index like z[hidden + j] makes numba test for negative indices at
    each element, which alone stops vectorisation). A sigmoid or tanh is a chain of about 15
    dependent instructions: two gates per loop keep two chains in flight, and float32's
    polynomial goes by Estrin's scheme (``estrin7``), shallower than Horner's. Together they
    take a row's gate arithmetic in cache from 6.5 to 5.3 ns per unit (float32, B 32, H 256).
    One loop doing all of the row's work, c and h included, would be 2x slower.
    """
    for j in range(c.size):
        zi[j], zf[j] = sigmoid(zi[j]), sigmoid(zf[j])
    for j in range(c.size):
        zg[j], zo[j] = tanh(zg[j]), sigmoid(zo[j])
    for j in range(c.size):
        c[j] = zf[j] * c_prev[j] + zi[j] * zg[j]
    for j in range(c.size):
        tanh_c[j] = tanh(c[j])
    for j in range(c.size):
        h[j] = zo[j] * tanh_c[j]


@cached_njit(inline="always", error_model="numpy")
def is_apart(dgates, gates):
    """False where dgates is gates' own memory (the backward writing over the cache). Asked
    once per call, not per row, where it would cost ~0.35 µs a row (config a)."""
    return dgates.ctypes.data != gates.ctypes.data


@cached_njit(inline="always", error_model="numpy")
def gate_grads(a, dy, dh, dc, c_prev, tanh_c, dz, apart):
    """One row of one step backward: a (G,) the activated gates; dh, dc (H,) arrive as the
    gradients from step t+1 and dc leaves as dc_{t-1}; dz (G,) gets the pre-activations'. dz
    is a itself (training's backward consumes the cache), or apart from it (``apart``, from
    ``is_apart`` once per call): then a is copied into dz first (see ``gate_grads_units``)."""
    n = dh.size
    if apart:
        for g in range(dz.size):
            dz[g] = a[g]
    gate_grads_units(
        dz[:n], dz[n : 2 * n], dz[2 * n : 3 * n], dz[3 * n :], dy, dh, dc, c_prev, tanh_c
    )


@cached_njit(inline="always", error_model="numpy")
def gate_grads_units(zi, zf, zg, zo, dy, dh, dc, c_prev, tanh_c):
    """``gate_grads`` for some hidden units, in place: zi, zf, zg, zo (n,) arrive holding the
    activated gates i, f, g, o and leave holding the pre-activations' gradients.

    In place because LLVM vectorises a loop only where its run-time check finds the arrays it
    writes apart from those it reads, or knows them to be the same: gradients written to other
    arguments that are the gates' own memory (training's backward consumes the cache) fail the
    check, and the scalar loop runs, 5x slower (8,650 rows of H 256, float32: 19.3 against
    4.0 ms; about 3 ms of config d's training step)."""
    one = like(dh[0], 1.0)  # (the literal 1 would promote float32 to float64)
    for j in range(dh.size):
        i, f, g, o = zi[j], zf[j], zg[j], zo[j]
        dh_j = dh[j] + dy[j]
        dc_j = dc[j] + dh_j * o * (one - tanh_c[j] * tanh_c[j])
        zi[j] = dc_j * g * i * (one - i)
        zf[j] = dc_j * c_prev[j] * f * (one - f)
        zg[j] = dc_j * i * (one - g * g)
        zo[j] = dh_j * tanh_c[j] * o * (one - o)
        dc[j] = dc_j * f


@cached_njit(error_model="numpy")
def activate_step(gates, c_prev, c, h, tanh_c):
    """One step's gate arithmetic for every row: gates (B, G) arrive holding the
    pre-activations and leave holding i, f, g, o; writes c, h, tanh(c) (B, H)."""
    for b in range(gates.shape[0]):
        activate(gates[b], c_prev[b], c[b], h[b], tanh_c[b])


@cached_njit(error_model="numpy")
def forward_loop(gates, weight_panels, hs, cs, tanh_cs, product):
    """gates (T, B, G) arrive holding x W_ihᵀ + b and leave holding i, f, g, o. weight_panels
    (P, H, PANEL) is W_hhᵀ (H, G) in panels (``kernel.pack_columns``, zero-padded to P·PANEL
    columns); hs, cs (T+1, B, H) arrive with h_0, c_0 in row 0; product (B, P·PANEL) is
    scratch for each step's h_{t-1} W_hhᵀ, made by the register kernel."""
    steps, batch, four_h = gates.shape
    span = weight_panels.shape[2]
    for t in range(steps):
        for p in range(weight_panels.shape[0]):  # (B, H) @ (H, PANEL) -> product[:, p·PANEL:]
            full_width_product(hs[t], weight_panels[p], product, p * span, False)
        for b in range(batch):
            z = gates[t, b]  # (G,)
            add_into(z, product[b, :four_h])  # z += h_{t-1} W_hhᵀ
            activate(z, cs[t, b], cs[t + 1, b], hs[t + 1, b], tanh_cs[t, b])


@cached_njit(error_model="numpy")
def backward_loop(dy, gates, cs, tanh_cs, weight_panels, dh, dc, dgates, product):
    """dy (T, B, H); dh, dc (B, H) arrive as dh_T, dc_T and leave as dh_0, dc_0; dgates
    (T, B, G) is filled with the gradient of the pre-activations. weight_panels (P, G, PANEL)
    is W_hh (G, H) in panels; product (B, P·PANEL) is scratch for each step's dz_t W_hh."""
    steps, batch, hidden = dy.shape
    span = weight_panels.shape[2]
    apart = is_apart(dgates, gates)
    for t in range(steps - 1, -1, -1):
        for b in range(batch):
            dz = dgates[t, b]  # (G,)
            gate_grads(gates[t, b], dy[t, b], dh[b], dc[b], cs[t, b], tanh_cs[t, b], dz, apart)
        for p in range(weight_panels.shape[0]):  # (B, G) @ (G, PANEL) -> product[:, p·PANEL:]
            full_width_product(dgates[t], weight_panels[p], product, p * span, False)
        for b in range(batch):  # dh_{t-1} = dz_t W_hh
            dh[b] = product[b, :hidden]


@cached_njit(error_model="numpy")
def scatter_rows(ids, rows, out):
    """out (D, G) = Σ over n of rows[n] (G,) added into out[ids[n]]: for one-hot input,
    dW_ihᵀ without the (D, N) @ (N, G) product by a one-hot matrix."""
    out[:] = 0
    for n in range(ids.size):
        target, row = out[ids[n]], rows[n]
        for g in range(row.size):
            target[g] += row[g]


@cached_njit(error_model="numpy")
def gather_rows(table, bias, ids, out):
    """``reference.cell.gather_rows`` compiled: out (N, G) = table[ids] + bias, in one pass (at
    T 100, B 64, 4H 1024: 2.4 ms, against 15 for NumPy's take into a buffer, then the add)."""
    for n in range(ids.size):
        row, source = out[n], table[ids[n]]
        for g in range(row.size):
            row[g] = source[g] + bias[g]


@cached_njit(error_model="numpy", fastmath={"reassoc"})
def cross_entropy_rows(logits, targets, dlogits, scale):
    """Σ_n (log Σ_v exp(s_nv) − s_n,target) with s = logits − row max; dlogits (N, V) gets
    (softmax − one_hot(target))·scale. One pass per row; ``reassoc`` lets LLVM vectorise the
    row's max and sum too (6,400 × 65 float32: 0.56 ms, 1.1 without)."""
    total = 0.0
    for n in range(logits.shape[0]):
        row, grad = logits[n], dlogits[n]
        top = row[0]
        for v in range(1, row.size):
            top = max(top, row[v])
        norm = like(top, 0.0)
        for v in range(row.size):
            e, m = exp_parts(row[v] - top)
            grad[v] = fma(e, m, e)
            norm += grad[v]
        inverse = scale / norm
        for v in range(row.size):
            grad[v] *= inverse
        grad[targets[n]] -= scale
        total += np.log(norm) - (row[targets[n]] - top)
    return total


@cached_njit(error_model="numpy")
def adam_step(
    params,
    grads,
    exp_avg,
    exp_avg_sq,
    beta1,
    beta2,
    eps,
    weight_decay,
    decoupled,
    decay,
    one_minus_beta2,
    bias_correction2_sqrt,
    step_size,
):
    """``training.optim.Adam.step`` in one pass over the flat buffers instead of about fourteen,
    with the same arithmetic in the same order. Scalars arrive in the buffers' dtype, those
    that are combinations (decay = 1 − lr·wd, 1 − β2, step_size = lr / (1 − β1^t)) computed in
    float64 first, as the NumPy path computes them."""
    for n in range(params.size):
        s = grads[n]
        if decoupled:
            params[n] *= decay
        elif weight_decay != 0:
            s = params[n] * weight_decay + s
        m = (exp_avg[n] - s) * beta1 + s  # beta1·m + (1 − beta1)·g, kept in place
        v = exp_avg_sq[n] * beta2 + s * s * one_minus_beta2
        exp_avg[n], exp_avg_sq[n] = m, v
        params[n] -= m / (np.sqrt(v) / bias_correction2_sqrt + eps) * step_size
