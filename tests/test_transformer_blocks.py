"""Transformer blocks and vision-transformer pieces as Layers (lrpnumpy.layers.transformer): PyTorch's
outputs and gradients to the last digits, finite differences, nested parameter names, saving, training,
and AttnLRP / CP-LRP through them with a balanced conservation report per primitive."""

import json

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites, explain, train
from lrpnumpy.errors import LayerParameterError, NonFiniteError, ShapeError
from lrpnumpy.layers import Graph, expand
from lrpnumpy.rules_transformer import AddedParameter

EPS = 1e-12


def randomise(net, rng, bias=0.3):
    """Every parameter random (norm weights near 1, biases of size ``bias``)."""
    for layer in net:
        for name in layer.params:
            p = getattr(layer, name)
            if p is None:
                continue
            leaf = name.rpartition(".")[2]
            if leaf == "weight" and p.ndim == 1:  # a norm's scale
                value = 1 + 0.2 * rng.normal(size=p.shape)
            elif "bias" in leaf:
                value = bias * rng.normal(size=p.shape)
            else:
                value = rng.normal(size=p.shape) / np.sqrt(max(p.shape[-1], 1))
            setattr(layer, name, value)
    return net


def tiny_vit(rng, bias=0.3, norm_first=True):
    """8x8 images, patches of 4 (4 tokens + the class token), width 8, 2 heads, one encoder block,
    one SwiGLU block, final LayerNorm, the class token's features, a linear head."""
    net = L.Sequential(L.PatchEmbedding(1, 8, 4, rng=0), L.ClassToken(8, rng=1), L.PositionEmbedding(5, 8, rng=2),
                       L.TransformerEncoderLayer(8, 2, 16, norm_first=norm_first, rng=3), L.SwiGLUBlock(8, 12, rng=4),
                       L.LayerNorm(8), L.SelectToken(0), L.Linear(8, 3, rng=5), input_shape=(1, 8, 8))
    return randomise(net, rng, bias)


def torch_param(layer, name):
    """Our parameter for PyTorch's state-dict name (``out_proj.weight`` is ``out_proj_weight`` here)."""
    return getattr(layer, name.replace("out_proj.", "out_proj_"))


def torch_vit(torch, net):
    """The same ViT in torch (float64), sharing nothing but copied weights: forward(x) and the parameters by name."""
    pe, ct, pos, block, glu, norm, _, head = net
    tblock = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True,
                                              norm_first=block.norm_first, dtype=torch.float64)
    tblock.load_state_dict({k: torch.tensor(torch_param(block, k)) for k in tblock.state_dict()})
    params = {"pe.weight": pe.proj.weight, "pe.bias": pe.proj.bias, "cls": ct.cls_token, "pos": pos.pos_embedding,
              "rms": glu.norm.weight, "gate": glu.gate_proj.weight, "up": glu.up_proj.weight,
              "down": glu.down_proj.weight, "ln.weight": norm.weight, "ln.bias": norm.bias,
              "head.weight": head.weight, "head.bias": head.bias}
    t = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    rms = torch.nn.RMSNorm(8, eps=glu.eps, dtype=torch.float64)
    with torch.no_grad():
        rms.weight.copy_(t["rms"])

    def forward(x):
        h = torch.nn.functional.conv2d(x, t["pe.weight"], t["pe.bias"], stride=4)
        h = h.flatten(2).transpose(1, 2)
        h = torch.cat([t["cls"].expand(len(x), 1, 8), h], dim=1) + t["pos"]
        h = tblock(h)
        r = torch.nn.functional.rms_norm(h, (8,), t["rms"], glu.eps)
        h = h + (torch.nn.functional.silu(r @ t["gate"].T) * (r @ t["up"].T)) @ t["down"].T
        h = torch.nn.functional.layer_norm(h, (8,), t["ln.weight"], t["ln.bias"], norm.eps)
        return h[:, 0] @ t["head.weight"].T + t["head.bias"]
    return forward, t, tblock


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_encoder_layer_equals_torch_with_its_gradients(norm_first, activation, rng):
    torch = pytest.importorskip("torch")
    block = randomise([L.TransformerEncoderLayer(8, 2, 16, activation=activation, norm_first=norm_first, rng=0)],
                      rng)[0]
    ref = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=activation, batch_first=True,
                                           norm_first=norm_first, dtype=torch.float64)
    assert set(ref.state_dict()) == {n.replace("out_proj_", "out_proj.") for n in block.params}
    ref.load_state_dict({k: torch.tensor(torch_param(block, k)) for k in ref.state_dict()})
    x = rng.normal(size=(3, 5, 8))
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    g = rng.normal(size=yt.shape)
    yt.backward(torch.tensor(g))
    y, step = block.forward_trace(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=1e-12)
    grads = block.param_grads(g, step)
    np.testing.assert_allclose(block.backward(g, step), xt.grad.numpy(), rtol=0, atol=1e-12)
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(torch_param_grad(grads, name), p.grad.numpy(), rtol=0, atol=1e-12, err_msg=name)
    # backward alone (no parameter gradients first) gives the same input gradient
    _, step2 = block.forward_trace(x)
    np.testing.assert_allclose(block.backward(g, step2), xt.grad.numpy(), rtol=0, atol=1e-12)


def torch_param_grad(grads, name):
    return grads[name.replace("out_proj.", "out_proj_")]


def test_vit_with_a_swiglu_block_equals_torch_with_every_gradient(rng):
    torch = pytest.importorskip("torch")
    net = tiny_vit(rng)
    forward, t, tblock = torch_vit(torch, net)
    x = rng.random((2, 1, 8, 8))
    xt = torch.tensor(x, requires_grad=True)
    yt = forward(xt)
    g = rng.normal(size=yt.shape)
    yt.backward(torch.tensor(g))
    y, trace = net.forward_trace(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=1e-12)
    g_in, grads = net.backward(g, trace, param_grads=True)
    np.testing.assert_allclose(g_in, xt.grad.numpy(), rtol=0, atol=1e-12)
    pe, ct, pos, block, glu, norm, _, head = range(8)
    ours = {"pe.weight": grads[pe]["proj.weight"], "pe.bias": grads[pe]["proj.bias"], "cls": grads[ct]["cls_token"],
            "pos": grads[pos]["pos_embedding"], "rms": grads[glu]["norm.weight"], "gate": grads[glu]["gate_proj.weight"],
            "up": grads[glu]["up_proj.weight"], "down": grads[glu]["down_proj.weight"],
            "ln.weight": grads[norm]["weight"], "ln.bias": grads[norm]["bias"], "head.weight": grads[head]["weight"],
            "head.bias": grads[head]["bias"]}
    for name, value in t.items():
        np.testing.assert_allclose(ours[name], value.grad.numpy(), rtol=0, atol=1e-12, err_msg=name)
    for name, p in tblock.named_parameters():
        np.testing.assert_allclose(torch_param_grad(grads[block], name), p.grad.numpy(), rtol=0, atol=1e-12,
                                   err_msg=name)


def test_finite_differences_of_every_parameter_and_the_input(rng):
    net = tiny_vit(rng)
    x = rng.random((2, 1, 8, 8))
    w = rng.normal(size=(2, 3))

    def loss():
        return float((net.forward(x) * w).sum())

    y, trace = net.forward_trace(x)
    g_in, grads = net.backward(w, trace, param_grads=True)
    h = 1e-6
    checked = 0
    for i, layer in enumerate(net):
        for name in layer.params:
            p = getattr(layer, name)
            if p is None:
                continue
            for idx in [tuple(rng.integers(0, n) for n in p.shape) for _ in range(2)]:
                old = p[idx]
                p[idx] = old + h
                up = loss()
                p[idx] = old - h
                down = loss()
                p[idx] = old
                assert abs((up - down) / (2 * h) - grads[i][name][idx]) < 1e-7, (i, name, idx)
                checked += 1
    assert checked == 2 * sum(p is not None for layer in net for p in (getattr(layer, n) for n in layer.params))
    for idx in [(0, 0, 1, 2), (1, 0, 7, 7)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd = ((net.forward(xp) * w).sum() - (net.forward(xm) * w).sum()) / (2 * h)
        assert abs(fd - g_in[idx]) < 1e-7


def test_parameters_are_reachable_by_torch_names_as_nested_attributes():
    block = L.TransformerEncoderLayer(8, 2, 16, rng=0)
    assert block.self_attn.in_proj_weight.shape == (24, 8)
    assert block.self_attn.out_proj.weight is block.self_attn.out_proj_weight
    assert getattr(block, "self_attn.in_proj_weight") is block.self_attn.in_proj_weight
    assert block.linear1.weight.shape == (16, 8) and block.norm1.bias.shape == (8,)
    assert block.param_shapes()["linear2.weight"] == (8, 16)
    block.linear1.weight = np.zeros((16, 8))  # assigning the nested attribute replaces the block's parameter
    assert not getattr(block, "linear1.weight").any()
    setattr(block, "norm2.bias", np.ones(8))
    assert block.norm2.bias.sum() == 8
    with pytest.raises(ShapeError, match="linear1"):
        setattr(block, "linear1.weight", np.zeros((3, 3)))
    with pytest.raises(ShapeError, match="no sub-layer 'linear9'"):
        setattr(block, "linear9.weight", np.zeros((3, 3)))
    copy = block.copy()
    copy.linear2.weight[...] = 7.0
    assert not (block.linear2.weight == 7.0).any()
    assert copy.astype(np.float32).self_attn.in_proj_weight.dtype == np.float32
    frozen = block.copy().freeze()
    assert not frozen.self_attn.in_proj_weight.flags.writeable


def test_save_and_load_round_trip_sequential_and_graph(rng, tmp_path):
    net = tiny_vit(rng)
    x = rng.random((2, 1, 8, 8))
    L.io.save(net, tmp_path / "vit.npz")
    back = L.io.load(tmp_path / "vit.npz")
    np.testing.assert_array_equal(back.forward(x), net.forward(x))
    assert repr(back[3]) == repr(net[3]) and back[3].norm_first
    block = L.TransformerEncoderLayer(8, 4, 12, activation="relu", norm_first=False, bias=False, causal=True, rng=0)
    graph = Graph([("block", block, "input"), ("glu", L.SwiGLUBlock(8, 6, rng=1), "block"),
                   ("add", L.Add(), ["glu", "input"])])
    L.io.save(graph, tmp_path / "g.npz")
    back = L.io.load(tmp_path / "g.npz", dtype=np.float32)
    t = rng.normal(size=(2, 5, 8))
    np.testing.assert_allclose(back.forward(t.astype(np.float32)), graph.forward(t), rtol=1e-4, atol=1e-5)
    assert back["block"].config() == block.config() and back["block"].self_attn.in_proj_bias is None


def test_train_fit_trains_the_nested_parameters(rng):
    net = tiny_vit(rng, bias=0.0)
    x = rng.random((64, 1, 8, 8))
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
    before = net[3].self_attn.in_proj_weight.copy(), net[1].cls_token.copy(), net[4].gate_proj.weight.copy()
    loss0 = train.cross_entropy(net.forward(x), y)[0]
    history = train.fit(net, x, y, epochs=15, batch_size=16, optimizer=train.Adam(3e-3), progress=False)
    assert history.loss[-1] < 0.7 * loss0
    after = net[3].self_attn.in_proj_weight, net[1].cls_token, net[4].gate_proj.weight
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("name, kw", [("attnlrp", {}), ("attnlrp", {"gamma": 0.25}), ("cp_lrp", {})])
def test_lrp_through_the_blocks_equals_the_expanded_primitives(name, kw, rng):
    """The composites reach every primitive inside the blocks; expand() gives each its own row of the
    conservation report, every row balances, and the relevance is the nested network's."""
    net = tiny_vit(rng)
    x = rng.random((2, 1, 8, 8))
    flat = expand(net)
    np.testing.assert_allclose(flat.forward(x), net.forward(x), rtol=1e-13, atol=1e-14)
    for node in ("0.proj", "3.norm1", "3.self_attn.q", "3.self_attn.attention", "3.linear1", "4.gated", "4.norm"):
        assert node in flat.names, node
    comp = composites.get(name, epsilon=EPS, **kw)
    nested, expanded = (explain(n, x, target=1, composite=comp) for n in (net, flat))
    assert repr(expanded.rules[flat.names.index("3.linear1")]) == ("Gamma(gamma=0.25, epsilon=1e-12)" if kw else
                                                                   "Epsilon(epsilon=1e-12)")
    np.testing.assert_allclose(expanded.relevance, nested.relevance, rtol=1e-10, atol=1e-13)
    assert np.abs(nested.relevance).max() > 1e-3
    report = expanded.conservation()
    assert np.abs(report.residual()).max() < 1e-9
    assert np.abs(nested.conservation().residual()).max() < 1e-9
    rows = {r["name"]: r for r in report.to_dict()}
    assert rows["3.self_attn.attention"]["softmax"] != 0 if name == "attnlrp" else \
        rows["3.self_attn.attention"]["relevance_out"] == 0.0
    assert rows["2"]["bias"] != 0 and rows["1"]["bias"] != 0  # the position embedding and the class token


def test_block_relevance_equals_the_hand_wired_graph(rng):
    """AttnLRP on TransformerEncoderLayer = AttnLRP on the same block wired from primitives by hand (the
    Graph that tests/test_attnlrp.py checks against lxt)."""
    block = randomise([L.TransformerEncoderLayer(8, 2, 16, rng=0)], rng)[0]
    graph = Graph([("ln1", block.norm1, "input"), ("attn", block.self_attn, "ln1"), ("add1", L.Add(), ["attn", "input"]),
                   ("ln2", block.norm2, "add1"), ("fc1", block.linear1, "ln2"), ("gelu", L.GELU(), "fc1"),
                   ("fc2", block.linear2, "gelu"), ("add2", L.Add(), ["fc2", "add1"])])
    x = rng.normal(size=(2, 5, 8))
    y = graph.forward(x)
    np.testing.assert_array_equal(block.forward(x), y)
    for name in ("attnlrp", "cp_lrp"):
        comp = composites.get(name, epsilon=EPS)
        ours = explain(Graph([("b", block, "input")]), x, relevance_out=y, composite=comp).relevance
        np.testing.assert_allclose(ours, explain(graph, x, relevance_out=y, composite=comp).relevance, rtol=1e-12,
                                   atol=1e-14)


def test_cp_lrp_conserves_without_biases(rng):
    """CP-LRP with zero biases and no parameters added: input relevance = output relevance (stabilizer ~ 0)."""
    net = randomise(L.Sequential(L.TransformerEncoderLayer(8, 2, 16, rng=0), L.SwiGLUBlock(8, 12, rng=1)), rng, 0.0)
    x = rng.normal(size=(2, 5, 8))
    y = net.forward(x)
    e = explain(net, x, relevance_out=y, composite=composites.get("cp_lrp", epsilon=EPS))
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2)), y.sum(axis=(1, 2)), rtol=1e-9)


def test_added_parameter_rule_formulas(rng):
    pos = L.PositionEmbedding(3, 4, rng=0)
    pos.pos_embedding = rng.normal(size=(1, 3, 4))
    x = rng.normal(size=(2, 3, 4))
    y, step = pos.forward_trace(x)
    R = rng.normal(size=y.shape)
    eps = 0.01
    R_in, ledger = AddedParameter(eps).propagate(step, R)
    z = y + eps * np.where(y >= 0, 1.0, -1.0)
    np.testing.assert_allclose(R_in, x * R / z, rtol=1e-13)
    np.testing.assert_allclose(ledger["bias"], (pos.pos_embedding * R / z).sum(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(R_in.sum(axis=(1, 2)) + ledger["bias"] + ledger["stabilizer"], R.sum(axis=(1, 2)),
                               rtol=1e-12)
    cls = L.ClassToken(4, rng=0)
    y, step = cls.forward_trace(x)
    R = rng.normal(size=y.shape)
    R_in, ledger = AddedParameter(eps).propagate(step, R)
    np.testing.assert_array_equal(R_in, R[:, 1:])
    np.testing.assert_allclose(ledger["bias"], R[:, 0].sum(axis=1))


def test_vit_pieces_shapes_and_layout(rng):
    pe = L.PatchEmbedding(2, 6, 3, rng=0)
    x = rng.normal(size=(2, 2, 6, 9))
    tokens = pe.forward(x)
    assert tokens.shape == (2, 6, 6)
    patch = x[:, :, 3:6, 6:9]  # row 1, column 2 -> token 1 * 3 + 2
    np.testing.assert_allclose(tokens[:, 5], np.einsum("nchw,echw->ne", patch, pe.proj.weight) + pe.proj.bias,
                               rtol=1e-12)
    cls = L.ClassToken(6, rng=0)
    out = cls.forward(tokens)
    assert out.shape == (2, 7, 6) and np.array_equal(out[1, 0], cls.cls_token[0, 0])
    np.testing.assert_array_equal(L.SelectToken(0).forward(out), out[:, 0])


def test_bad_input_is_named():
    with pytest.raises(ShapeError, match="3 tokens but there are position embeddings for 5"):
        L.PositionEmbedding(5, 4).forward(np.zeros((1, 3, 4)))
    with pytest.raises(LayerParameterError, match="must divide"):
        L.TransformerEncoderLayer(6, 4, 8)
    with pytest.raises(NonFiniteError, match="LayerNorm"):
        L.TransformerEncoderLayer(4, 2, 8).forward(np.full((1, 3, 4), np.nan))
    with pytest.raises(ShapeError, match="length 0"):
        L.Softmax(axis=-1).forward(np.zeros((2, 3, 0)))
    with pytest.raises(ShapeError, match="multiples of 7"):
        L.PatchEmbedding(1, 8, 7).forward(np.zeros((1, 1, 10, 10)))
    with pytest.raises(ShapeError, match="tokens"):
        L.SwiGLUBlock(4, 8).forward(np.zeros((2, 4)))
    with pytest.raises(LayerParameterError, match="activation"):
        L.TransformerEncoderLayer(4, 2, 8, activation="tanh")


def vit_two_blocks(rng):
    net = L.Sequential(L.PatchEmbedding(1, 8, 4, rng=0), L.ClassToken(8, rng=1), L.PositionEmbedding(5, 8, rng=2),
                       L.TransformerEncoderLayer(8, 2, 16, rng=3), L.TransformerEncoderLayer(8, 2, 16, rng=4),
                       L.LayerNorm(8), L.SelectToken(0), L.Linear(8, 3, rng=5), input_shape=(1, 8, 8))
    return randomise(net, rng)


def hand_attention(block, h):
    """Per-head attention weights (N, H, T, T) of a pre-norm block for tokens h, from the formulas."""
    mha = block.self_attn
    z = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + block.norm1.eps)
    z = z * block.norm1.weight + block.norm1.bias
    W, b, E, H = mha.in_proj_weight, mha.in_proj_bias, mha.embed_dim, mha.num_heads
    q, k = z @ W[:E].T + b[:E], z @ W[E:2 * E].T + b[E:2 * E]
    d = E // H
    out = np.zeros((len(h), H, h.shape[1], h.shape[1]))
    for n in range(len(h)):
        for head in range(H):
            s = q[n, :, head * d:(head + 1) * d] @ k[n, :, head * d:(head + 1) * d].T / np.sqrt(d)
            e = np.exp(s - s.max(axis=1, keepdims=True))
            out[n, head] = e / e.sum(axis=1, keepdims=True)
    return out


def test_attention_rollout_and_raw_attention_against_hand_computation(rng):
    from lrpnumpy import methods
    net = vit_two_blocks(rng)
    x = rng.random((2, 1, 8, 8))
    h = net[2].forward(net[1].forward(net[0].forward(x)))
    A1 = hand_attention(net[3], h)
    A2 = hand_attention(net[4], net[3].forward(h))
    eye = np.eye(5)
    rollout = (0.5 * A2.mean(1) + 0.5 * eye) @ (0.5 * A1.mean(1) + 0.5 * eye)
    expected = np.zeros((2, 1, 8, 8))
    for n in range(2):
        for token in range(4):  # patch tokens 1..4, row by row on the 2 x 2 grid
            r, c = divmod(token, 2)
            expected[n, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = rollout[n, 0, 1 + token]
    e = methods.get("attention_rollout")(net, x)
    assert e.method == "attention_rollout" and e.relevance.shape == x.shape
    np.testing.assert_allclose(e.relevance, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(e.target, net.forward(x).argmax(1))
    raw = methods.get("raw_attention")(net, x, layer=0, head_fusion="max")
    np.testing.assert_allclose(raw.relevance[:, 0, ::4, ::4].reshape(2, 4), A1.max(1)[:, 0, 1:], rtol=1e-12)
    plain = methods.attention_rollout(net, x, residual=False)
    np.testing.assert_allclose(plain.relevance[:, 0, ::4, ::4].reshape(2, 4),
                               (A2.mean(1) @ A1.mean(1))[:, 0, 1:], rtol=1e-12)
    with pytest.raises(L.errors.RuleParameterError, match="head_fusion"):
        methods.attention_rollout(net, x, head_fusion="median")
    with pytest.raises(L.errors.RuleParameterError, match="2 attention layers"):
        methods.raw_attention(net, x, layer=2)
    with pytest.raises(ShapeError, match="MultiheadAttention"):
        methods.attention_rollout(L.Sequential(L.Flatten(), L.Linear(64, 3, rng=0)), x)


def test_cli_explains_the_shipped_vit_with_attnlrp(tmp_path, capsys):
    """``lrpnumpy explain fashion_vit IMAGE``: the model's metadata makes AttnLRP the default, and the
    per-image line adds up with the softmax's share; attention rollout runs as a --method."""
    from PIL import Image
    from lrpnumpy.__main__ import main
    image = (datasets_sample()[0][0, 0] * 255).round().astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "shoe.png")
    assert main(["explain", "fashion_vit", str(tmp_path / "shoe.png"), "--json", "--npy", str(tmp_path / "r.npy"),
                 "--out", str(tmp_path / "r.png")]) == 0
    [row] = json.loads(capsys.readouterr().out)["rows"]
    net = L.zoo.trained("fashion_vit")
    assert net.meta["composite"] == "attnlrp" and net.meta["test_accuracy"] >= 0.88
    x = (image.astype(np.float32) / 255)[None, None]
    e = explain(net, x, composite=composites.get("attnlrp"))
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), e.relevance, rtol=1e-6, atol=1e-7)
    total = row["relevance_sum"] + row["absorbed_by_biases"] + row["absorbed_by_stabilizer"] + row["dropped"] + \
        row["absorbed_by_softmax"]
    assert abs(total - row["logit"]) <= 1e-4 * abs(row["logit"]) and row["absorbed_by_softmax"] != 0
    assert main(["explain", "fashion_vit", str(tmp_path / "shoe.png")]) == 0
    line = capsys.readouterr().out
    assert "logit" in line and "softmax" in line and "rounding" not in line, line
    assert main(["explain", "fashion_vit", str(tmp_path / "shoe.png"), "--method", "attention_rollout",
                 "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["rows"]
    assert row["predicted"] == int(e.output.argmax())


def datasets_sample():
    s = L.datasets.sample()
    return s.images[s.labels == 9], s.labels[s.labels == 9]


def test_demo_runs_on_the_vit_with_transformer_methods(tmp_path):
    from lrpnumpy import demo
    lines = []
    e = demo.run(str(tmp_path / "d.png"), model="fashion_vit", out=lines.append)
    assert "Inner(AttnLRP)" in [repr(r) for r in e.rules]
    assert "conservation of image 0, attnlrp" in "\n".join(lines) and (tmp_path / "d.png").stat().st_size > 0
    assert np.abs(e.conservation().residual()).max() < 1e-9


def test_every_method_and_composite_explains_a_vit(rng):
    """Gradient methods, occlusion, the attention methods and both transformer composites on a ViT, also for
    an empty batch (relevance of x's shape and dtype)."""
    from lrpnumpy import methods
    options = {"occlusion": dict(window=4, stride=4), "integrated_gradients": dict(n=4),
               "smoothgrad": dict(n=2, rng=0)}
    runs = {name: (lambda net, b, name=name: methods.get(name)(net, b, target=1, **options.get(name, {})))
            for name in ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "occlusion",
                         "attention_rollout", "raw_attention")}
    runs.update({name: (lambda net, b, name=name: explain(net, b, target=1, composite=composites.get(name)))
                 for name in ("attnlrp", "cp_lrp")})
    vit = vit_two_blocks(rng)
    for dtype in (np.float64, np.float32):
        net = vit.astype(dtype)
        for n in (2, 0):
            x = rng.random((n, 1, 8, 8)).astype(dtype)
            for name, run in runs.items():
                e = run(net, x)
                assert e.relevance.shape == x.shape and e.relevance.dtype == dtype, name
                assert np.isfinite(e.relevance).all() and e.output.shape == (n, 3), name


def test_name_and_index_maps_address_the_outer_network_only(rng):
    """A composite's name or index map names the outer network's layers; inside a block the type map
    applies (before, a name map was looked up among the block's nodes and refused)."""
    from lrpnumpy.rules import Epsilon
    net = tiny_vit(rng)
    x = rng.random((2, 1, 8, 8))
    plain = explain(net, x, target=0, composite=composites.get("attnlrp", epsilon=EPS))
    head = composites.AttnLRP(epsilon=EPS, name_map={"7": Epsilon(0.5)})
    last = composites.AttnLRP(epsilon=EPS, index_map={-1: Epsilon(0.5)})  # inside a block: its last Add
    e = explain(net, x, target=0, composite=head)
    assert repr(e.rules[7]) == "Epsilon(epsilon=0.5)" and not np.allclose(e.relevance, plain.relevance)
    np.testing.assert_array_equal(explain(net, x, target=0, composite=last).relevance, e.relevance)
