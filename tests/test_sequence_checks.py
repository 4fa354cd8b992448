"""Sequence models against the reference implementations, on the shipped text models and sentences.

Zennit on the text CNN (Embedding -> Transpose -> Conv1d -> ReLU -> max over time -> Linear):
Zennit explains from the embedded sentence, so the comparison runs from the embedding's output
(``verify.compare`` on the network after the Embedding, through ``verify.to_torch``'s 1-D
modules), and lrpnumpy's per-token relevance (``TokenSum``) equals Zennit's summed over D.
Captum's gradient methods on the shipped bidirectional LSTM, with a ragged batch (torch's packed
sequences against ``sequence_lengths``).
"""

import numpy as np
import pytest

import lrpnumpy as lp
from lrpnumpy import composites as C, methods, text, verify, zoo

pytestmark = pytest.mark.reference

ZENNIT = ("epsilon", "zplus", "alpha_beta_2_1", "alpha_beta_1_0", "flat", "epsilon_plus", "epsilon_alpha2_beta1",
          "epsilon_gamma_box", "epsilon_plus_flat", "gradient", "gradient_x_input")


def shipped(name, n=6):
    net = zoo.trained(name, dtype=np.float64)
    tm = text.text_model(net)
    x, ids, lengths = tm.inputs(text.fortunes().texts[:n])
    return net, x, lengths


def test_zennit_on_the_shipped_text_cnn():
    net, x, _ = shipped("fortunes_cnn")
    E = net[0].forward(x)                      # (N, T, D): Zennit starts here
    tail = lp.Sequential(*list(net)[1:])
    tnet = verify.to_torch(tail)
    import torch
    assert any(isinstance(m, torch.nn.Conv1d) for m in tnet.modules())
    rows = verify.compare(tail, E, target=np.arange(len(x)) % 6, against=("zennit",), methods=ZENNIT)
    assert [r["method"] for r in rows] == list(ZENNIT)
    for r in rows:
        assert r["status"] == "pass" and r["max_rel"] <= 1e-10, r
        assert np.abs(r["sums_reference"]).max() > 1e-3  # not vacuous


@pytest.mark.parametrize("name", ["epsilon", "epsilon_plus", "epsilon_alpha2_beta1", "epsilon_plus_flat"])
def test_token_relevance_is_zennits_summed_over_the_embedding(name):
    """The whole model with its Embedding: lrpnumpy's per-token relevance (TokenSum) is Zennit's relevance at
    the embedded sentence summed over D."""
    import torch
    from zennit.attribution import Gradient
    net, x, _ = shipped("fortunes_cnn")
    target = np.arange(len(x)) % 6
    if name == "epsilon":
        ours = lp.explain(net, x, target=target, rule=lp.Epsilon()).relevance
        composite = verify._zennit_composite("epsilon", 0, 0)
    else:
        ours = lp.explain(net, x, target=target, composite=C.get(name)).relevance
        composite = verify._zennit_composite(name, 0, 0)
    E = torch.from_numpy(net[0].forward(x)).requires_grad_(True)
    onehot = torch.from_numpy(np.eye(6)[target])
    with Gradient(model=verify.to_torch(lp.Sequential(*list(net)[1:])), composite=composite) as attributor:
        _, rel = attributor(E, lambda out: out * onehot)
    theirs = rel.detach().numpy().sum(axis=2)
    assert ours.shape == theirs.shape == x.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10 * np.abs(theirs).max())
    assert np.abs(theirs).max() > 1e-3


def test_zennit_on_every_1d_layer():
    """Conv1d with stride, dilation and padding, MaxPool1d, AvgPool1d, SumPool1d, Sigmoid: to_torch and Zennit."""
    net = lp.Sequential(lp.Transpose((0, 2, 1)), lp.Conv1d(5, 6, 3, stride=1, padding=2, dilation=2, rng=0),
                        lp.ReLU(), lp.MaxPool1d(3, stride=2, padding=1), lp.Conv1d(6, 4, 2, rng=1), lp.ReLU(),
                        lp.AvgPool1d(2), lp.SumPool1d(2, padding=1), lp.GlobalMaxPool1d(), lp.Linear(4, 3, rng=2))
    x = np.random.default_rng(3).normal(size=(4, 16, 5))
    rows = verify.compare(net, x, against=("zennit",), methods=("epsilon", "epsilon_plus", "alpha_beta_2_1",
                                                                  "flat", "gradient"))
    for r in rows:
        assert r["status"] == "pass" and r["max_rel"] <= 1e-10, r
    with pytest.raises(lp.errors.UnsupportedLayerError, match="asymmetric"):
        verify.to_torch(lp.Sequential(lp.Conv1d(2, 2, 3, padding=(1, 2), rng=0)))


def test_near_ties_see_1d_max_pool_windows():
    """A max pool over time with two equal-to-the-last-bits taps is a near-tie, found per window."""
    pool, glob = lp.MaxPool1d(2), lp.GlobalMaxPool1d()
    a = np.array([[[1.0, 2.0, 3.0, 3.0 * (1 + 2e-16)]]])
    windows = verify._pool_windows(pool, a)
    assert windows.shape == (1, 1, 1, 2, 2)
    np.testing.assert_array_equal(windows[0, 0, 0], [[1, 2], [3, 3.0 * (1 + 2e-16)]])
    assert verify._pool_windows(glob, a).shape == (1, 1, 1, 1, 4)
    b = a.copy()
    b[0, 0, 2] = 3.0 * (1 + 4e-16)  # the other side puts the other tap first
    for layer, expected in ((pool, [[False, True]]), (glob, [[True]])):
        mask, flip = verify._pool_ties(layer, a, b)
        np.testing.assert_array_equal(mask[0, 0], expected)
        np.testing.assert_array_equal(flip[0, 0], expected)


def _torch_bilstm(net):
    import torch
    rec, lin = net[1], net[2]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(rec.input_size, rec.hidden_size, batch_first=True, bidirectional=True).double()
            self.out = torch.nn.Linear(lin.in_features, lin.out_features).double()
            with torch.no_grad():
                for k, sfx in enumerate(("_l0", "_l0_reverse")):
                    for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        getattr(self.rnn, p + sfx).copy_(torch.from_numpy(getattr(rec, p)[k]))
                self.out.weight.copy_(torch.from_numpy(lin.weight))
                self.out.bias.copy_(torch.from_numpy(lin.bias))

        def forward(self, e, lengths):
            packed = torch.nn.utils.rnn.pack_padded_sequence(e, lengths, batch_first=True, enforce_sorted=False)
            _, (hn, _) = self.rnn(packed)
            return self.out(hn.permute(1, 0, 2).reshape(e.shape[0], -1))

    return Model()


def test_captum_on_the_shipped_lstm_with_a_ragged_batch():
    import torch
    from captum.attr import InputXGradient, IntegratedGradients, Saliency
    net, x, lengths = shipped("fortunes_lstm")
    assert len(set(lengths.tolist())) > 1  # ragged
    E = net[0].forward(x)
    tail = lp.Sequential(*list(net)[1:])
    model = _torch_bilstm(net)
    Lt = torch.from_numpy(lengths.astype(np.int64))
    target = (np.arange(len(x)) * 5) % 6
    tt = torch.from_numpy(target)
    e = torch.from_numpy(E).requires_grad_(True)
    with lp.sequence_lengths(lengths):
        np.testing.assert_allclose(tail.forward(E), model(e, Lt).detach().numpy(), rtol=0, atol=1e-12)
        ours = {"saliency": methods.gradient(tail, E, target=target).relevance,
                "input_x_gradient": methods.gradient_x_input(tail, E, target=target).relevance,
                "integrated_gradients": methods.integrated_gradients(tail, E, target=target, n=16).relevance}
    theirs = {"saliency": Saliency(model).attribute(e, target=tt, abs=False, additional_forward_args=(Lt,)),
              "input_x_gradient": InputXGradient(model).attribute(e, target=tt, additional_forward_args=(Lt,)),
              "integrated_gradients": IntegratedGradients(model).attribute(
                  e, target=tt, n_steps=16, method="riemann_right", additional_forward_args=(Lt,))}
    for key, value in theirs.items():
        value = value.detach().numpy()
        np.testing.assert_allclose(ours[key], value, rtol=0, atol=1e-10 * np.abs(value).max(), err_msg=key)
        assert np.abs(value).max() > 1e-4
        for n, L in enumerate(lengths):  # nothing past a sentence's end
            assert (ours[key][n, L:] == 0).all()


def test_half_and_prop_amplify_on_the_shipped_lstm_and_the_report_accounts_for_it():
    """LRP-half and LRP-prop as published (see their docstrings): on the shipped LSTM, LRP-prop's word
    relevance grows exponentially with the sentence's length (products whose gate + signal is near 0), and
    every unit of it is in the conservation report (the LSTM's biases cancel what reaches the words)."""
    net, x, lengths = shipped("fortunes_lstm", n=40)
    i = int(np.argmax(lengths))
    ratios = {}
    for T in (2, 16):
        xs = x[i:i + 1, :T]
        out = net.forward(xs)
        t = out.argmax(1)
        for name in ("lrp_all", "lrp_half", "lrp_prop"):
            ex = lp.explain(net, xs, target=t, composite=C.get(name, epsilon=0.001))
            ratios[name, T] = abs(ex.relevance.sum() / out[0, t[0]])
            report = ex.conservation()
            scale = max(np.abs(row[k]).max() for row in report.rows
                        for k in ("relevance_in", "relevance_out", "bias", "stabilizer"))
            assert np.abs(report.residual()).max() <= 1e-10 * scale
    assert ratios["lrp_all", 16] < 3 and ratios["lrp_prop", 2] < 3
    assert ratios["lrp_prop", 16] > 1e6 * ratios["lrp_prop", 2]  # exponential in the length
    with lp.sequence_lengths(lengths):  # a larger epsilon tames LRP-half on these quotations
        out = net.forward(x)
        t = out.argmax(1)
        half = lp.explain(net, x, target=t, composite=C.get("lrp_half", epsilon=0.01)).relevance
    assert np.abs(half.sum(1) / out[np.arange(len(x)), t]).max() < 1


def test_deeplift_on_the_linear_parts_of_sequence_models():
    """DeepLIFT through Transpose, Conv1d, 1-D pools and Sigmoid: Captum's DeepLift on the shipped text CNN
    (from its embedding) and on a 1-D network with a Sigmoid; complete for any baseline with the default
    max-pool rule; an LSTM (gates times signals: not a linear part) is refused clearly."""
    net, x, _ = shipped("fortunes_cnn")
    E = net[0].forward(x)
    tail = lp.Sequential(*list(net)[1:])
    one_d = lp.Sequential(lp.Transpose((0, 2, 1)), lp.Conv1d(32, 6, 3, padding=1, rng=0), lp.Sigmoid(),
                          lp.AvgPool1d(2), lp.Conv1d(6, 4, 2, rng=1), lp.ReLU(), lp.MaxPool1d(2),
                          lp.Flatten(), lp.Linear(4 * ((E.shape[1] // 2 - 1) // 2), 3, rng=2))
    for model in (tail, one_d):
        rows = verify.compare(model, E, against=("captum",), methods=("deeplift",))
        assert rows[0]["status"] == "pass" and rows[0]["max_rel"] <= 1e-10, rows[0]
        assert np.abs(rows[0]["sums_reference"]).max() > 1e-3
    baseline = np.random.default_rng(0).normal(size=E.shape)
    for model in (tail, one_d):
        e = methods.deeplift(model, E, target=1, baseline=baseline)
        np.testing.assert_allclose(e.relevance.reshape(len(E), -1).sum(1),
                                   model.forward(E)[:, 1] - model.forward(baseline)[:, 1], rtol=1e-9, atol=1e-12)
    lstm, xl, _ = shipped("fortunes_lstm", n=2)
    with pytest.raises(lp.errors.UnsupportedLayerError, match="deeplift has no rule for LSTM"):
        methods.deeplift(lp.Sequential(*list(lstm)[1:]), lstm[0].forward(xl), target=0)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("output", ["sequence", "last"])
@pytest.mark.parametrize("name", ["lrp_all", "lrp_prop"])
def test_conservation_per_time_step(cell, output, name):
    """The conservation report's account of every time step of a recurrent layer (both directions, a ragged
    batch): each step balances, its input relevance is the layer's at that position, what a step passes on is
    what the step before it (in the direction's reading order) receives, and each sample's account is its own."""
    import json
    rec = getattr(lp, cell)(5, 4, bidirectional=True, output=output, rng=3)
    layers = [lp.Embedding(11, 5, rng=4), rec]
    if output == "sequence":
        layers += [lp.Transpose((0, 2, 1)), lp.GlobalMaxPool1d()]
    net = lp.Sequential(*layers, lp.Linear(8, 3, rng=5))
    ids = np.random.default_rng(6).integers(0, 11, size=(3, 6)).astype(np.float64)
    lengths = np.array([6, 2, 4])
    comp = C.get(name, epsilon=0.01)
    with lp.sequence_lengths(lengths):
        ex = lp.explain(net, ids, target=2, composite=comp)
    report = ex.conservation()
    row = report.rows[1]
    steps = row["steps"]
    assert set(report.step_residual()) == {1} and all(r.get("steps") is None for r in report.rows if r is not row)
    scale = max(np.abs(v).max() for v in steps.values())
    np.testing.assert_allclose(report.step_residual()[1], 0, atol=1e-12 * scale)
    np.testing.assert_allclose(steps["relevance_in"].sum(axis=1), ex.relevance, rtol=1e-12, atol=1e-14)
    for key in ("relevance_in", "bias", "stabilizer"):  # the steps add up to the layer's row
        np.testing.assert_allclose(steps[key].sum(axis=(1, 2)), row[key], rtol=1e-10, atol=1e-13)
    # what reaches a step from above: the layer's output relevance at that position (a sequence output)
    above = np.zeros_like(steps["relevance_out"])
    if output == "sequence":
        R_out = ex.layers[2]  # the relevance at the recurrent layer's output (N, T, 2 * H)
        above = np.stack([R_out[:, :, :4].sum(-1), R_out[:, :, 4:].sum(-1)], axis=1)
    for n, L in enumerate(lengths):
        fwd, bwd = steps["passed"][n, 0], steps["passed"][n, 1]
        np.testing.assert_allclose(fwd[1:L] + above[n, 0, :L - 1], steps["relevance_out"][n, 0, :L - 1], rtol=1e-12,
                                   atol=1e-14)
        np.testing.assert_allclose(bwd[:L - 1] + above[n, 1, 1:L], steps["relevance_out"][n, 1, 1:L], rtol=1e-12,
                                   atol=1e-14)
        # what the first step read passes on reaches the zero initial state: dropped in the layer's row
        np.testing.assert_allclose(row["dropped"][n] - steps["dropped"][n].sum(), fwd[0] + bwd[L - 1], rtol=1e-10,
                                   atol=1e-13)
        assert (steps["relevance_in"][n, :, L:] == 0).all()
        if output == "sequence":  # (the max over time there also sees the padded positions' zero outputs)
            continue
        alone = lp.explain(net, ids[n:n + 1, :L], target=2, composite=comp).conservation().rows[1]["steps"]
        for key, v in alone.items():
            np.testing.assert_allclose(steps[key][n, :, :L], v[0], rtol=1e-10, atol=1e-13)
    assert np.abs(steps["relevance_in"]).max() > 1e-3
    json.dumps(report.to_dict())
    assert np.shape(report.to_dict(sample=1)[1]["steps"]["passed"]) == (2, 6)


def test_verify_a_text_model_from_token_ids(capsys):
    """compare on a text model given token ids explains from its embedding's output (the references take
    floats), and ``lrpnumpy verify fortunes_cnn`` runs on the shipped quotations."""
    import json
    from lrpnumpy.__main__ import main
    net, x, _ = shipped("fortunes_cnn", n=3)
    rows = verify.compare(net, x, methods=("epsilon_plus",))
    assert rows[0]["status"] == "pass" and "Embedding's output" in rows[0]["note"]
    ours = lp.explain(net, x, composite=C.get("epsilon_plus"))  # the predicted classes, as compare
    np.testing.assert_allclose(ours.relevance.sum(1), rows[0]["sums_lrpnumpy"], rtol=1e-12)
    code = main(["verify", "fortunes_cnn", "--rules", "epsilon", "alpha_beta_2_1", "--batch", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["status"] for r in out["rows"]] == ["pass", "pass"]
