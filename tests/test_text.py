"""Text: the tokenizer, the vocabulary, encoding, per-token relevance, the shipped quotations and text
models, training with sequence lengths, word heatmaps, word deletion and ``explain --text``."""

import json
import subprocess
import sys

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import evaluate, text, train, viz
from lrpnumpy.errors import DTypeError, ModelFormatError, ParameterError, ShapeError


# ----- tokenizer and vocabulary -----

def test_tokenize_lowercases_and_splits_words_and_punctuation():
    assert text.tokenize("Don't panic -- it's only 42!") == ["don't", "panic", "-", "-", "it's", "only", "42", "!"]
    assert text.tokenize("  Straße_NAME\tÉté,x ") == ["straße", "name", "été", ",", "x"]
    assert text.tokenize("") == []
    with pytest.raises(DTypeError, match="str"):
        text.tokenize(b"bytes")


def test_vocabulary_build_counts_orders_and_caps():
    v = text.Vocabulary.build(["b a b c", "b a d ."], min_count=2)
    assert v.tokens == ("<pad>", "<unk>", "b", "a")  # b x3, a x2; c, d, . seen once
    assert (text.PAD_ID, text.UNK_ID) == (0, 1) and len(v) == 4 and "a" in v and "c" not in v
    assert text.Vocabulary.build(["b a b c", "b a d ."], max_size=5).tokens == ("<pad>", "<unk>", "b", "a", ".")
    assert v.ids("A c b") == [3, 1, 2]
    with pytest.raises(ParameterError):
        text.Vocabulary.build(["a"], min_count=0)
    with pytest.raises(ParameterError):
        text.Vocabulary.build(["a"], max_size=1)
    with pytest.raises(ParameterError, match="distinct"):
        text.Vocabulary(["a", "b", "a"])


def test_encode_pads_cuts_and_decodes():
    v = text.Vocabulary.build(["one two three four"])
    ids, lengths = v.encode(["one two", "four three two one five"])
    assert ids.dtype == np.int64 and ids.shape == (2, 5) and lengths.tolist() == [2, 5]
    assert ids[0, 2:].tolist() == [0, 0, 0] and ids[1, 4] == text.UNK_ID
    assert v.decode(ids, lengths) == [["one", "two"], ["four", "three", "two", "one", "<unk>"]]
    assert v.decode(ids[0]) == ["one", "two"]  # without lengths: up to the padding
    cut, n = v.encode("one two three four", length=3)
    assert cut.shape == (1, 3) and n.tolist() == [3]
    wide, n = v.encode("one", length=4)
    assert wide.tolist() == [[v.id("one"), 0, 0, 0]] and n.tolist() == [1]


def test_bad_text_input_is_a_clear_error():
    v = text.Vocabulary.build(["a b c"])
    with pytest.raises(ShapeError, match="no tokens"):
        v.encode(["a b", "  ... "[:2]])
    with pytest.raises(ShapeError, match="at least one"):
        v.encode([])
    with pytest.raises(ShapeError, match="out of range"):
        v.decode(np.array([[1, 2, 9]]))
    with pytest.raises(ShapeError, match="out of range"):
        v.decode(np.array([[-1, 2]]))
    with pytest.raises(ShapeError, match="ragged"):
        v.decode([[1, 2], [3]])
    with pytest.raises(DTypeError, match="whole"):
        v.decode(np.array([[1.5, 2.0]]))
    with pytest.raises(DTypeError, match="integers"):
        v.decode(np.array([[True, False]]))
    with pytest.raises(ShapeError, match="T >= 1"):
        v.decode(np.zeros((2, 0), np.int64))
    with pytest.raises(ShapeError, match="lengths"):
        v.decode(np.array([[2, 3]]), lengths=[3])
    with pytest.raises(ShapeError, match="lengths"):
        v.decode(np.array([[2, 3]]), lengths=[0])
    assert v.decode(np.array([[2.0, 3.0]])) == [["a", "b"]]  # whole floats (a network's input) are ids


# ----- per-token relevance -----

def _bag_model():
    """A 2-class bag of words over the vocabulary <pad> <unk> good bad movie, no bias."""
    vocab = text.Vocabulary(["good", "bad", "movie"])
    lin = L.Linear(5, 2, bias=False)
    lin.weight = np.array([[0.0, 0.1, 2.0, -1.0, 0.5],
                           [0.0, 0.0, -1.5, 3.0, 0.25]])
    net = L.Sequential(lin, input_shape=(5,), meta={"classes": ["pos", "neg"],
                                                     "text": text.text_meta(vocab, "bag", 8)})
    return text.text_model(net)


def test_bag_of_words_and_token_relevance_share_a_word_among_its_occurrences():
    tm = _bag_model()
    ids, lengths = tm.vocabulary.encode(["good good movie", "bad"])
    counts = text.bag_of_words(ids, 5, lengths)
    assert counts.tolist() == [[0, 0, 2, 0, 1], [0, 0, 0, 1, 0]]
    # padding inside a sequence's length (a deleted word) is not counted; lengths cut the rest
    assert text.bag_of_words([[2, 0, 4, 3]], 5, lengths=np.array([3])).tolist() == [[0, 0, 1, 0, 1]]
    e, per = tm.explain_ids(ids, lengths, target=0, rule=L.Epsilon(1e-12))
    np.testing.assert_allclose(e.relevance[0], [0, 0, 4.0, 0, 0.5])  # w * count, LRP-0 on a linear model
    np.testing.assert_allclose(per, [[2.0, 2.0, 0.5], [-1.0, 0, 0]])  # each occurrence of good: 4 / 2
    np.testing.assert_allclose(per.sum(axis=1), e.output[:, 0])
    np.testing.assert_array_equal(text.token_relevance(e, ids, lengths), per)
    with pytest.raises(ShapeError, match="per token"):
        text.token_relevance(np.zeros((3, 5)), ids)


def test_token_relevance_of_an_embedding_model_is_the_relevance_with_padding_zeroed():
    r = np.arange(8.0).reshape(2, 4)
    ids = np.array([[2, 3, 0, 0], [2, 2, 2, 3]])
    np.testing.assert_array_equal(text.token_relevance(r, ids), [[0, 1, 0, 0], [4, 5, 6, 7]])
    np.testing.assert_array_equal(text.token_relevance(r, ids, lengths=np.array([1, 2])), [[0, 0, 0, 0], [4, 5, 0, 0]])


def test_sensitivity_of_a_bag_of_words_is_the_squared_weight():
    tm = _bag_model()
    ids, lengths = tm.vocabulary.encode(["good bad movie movie", "bad"])
    s = tm.sensitivity(ids, lengths, target=1)
    np.testing.assert_allclose(s, [[1.5 ** 2, 9.0, 0.0625, 0.0625], [9.0, 0, 0, 0]])


def test_a_model_without_text_metadata_is_not_a_text_model():
    with pytest.raises(ModelFormatError, match="not a text model"):
        text.text_model(L.Sequential(L.Linear(3, 2)))
    with pytest.raises(ModelFormatError, match="not a text model"):
        text.text_model("fashion_mlp")


def test_the_vocabulary_is_saved_and_loaded_with_the_model(tmp_path):
    tm = _bag_model()
    L.io.save(tm.net, tmp_path / "bag.npz")
    back = text.text_model(L.io.load(tmp_path / "bag.npz"))
    assert back.vocabulary == tm.vocabulary and back.input == "bag" and back.length == 8
    assert back.classes == ("pos", "neg")
    np.testing.assert_array_equal(back.predict(["good movie", "bad bad"]), [0, 1])


# ----- the shipped quotations and models -----

def test_the_shipped_quotations():
    d = text.fortunes()
    assert d.classes == ("computers", "politics", "science", "law", "food", "sports")
    assert len(d.texts) == len(d.labels) == 569 and np.bincount(d.labels).tolist() == [210, 132, 128, 30, 45, 24]
    assert all(isinstance(t, str) and text.tokenize(t) for t in d.texts)
    assert not any("\n" in t or t.startswith("--") for t in d.texts)
    with pytest.raises(L.errors.DatasetError, match="test split"):
        text.fortunes("train")


@pytest.mark.parametrize("name", L.zoo.TEXT_TRAINED)
def test_each_shipped_text_model_has_its_recorded_accuracy_on_the_shipped_test_split(name):
    d = text.fortunes()
    tm = text.text_model(name)
    assert tm.classes == d.classes and tm.net.dtype == np.float32 and len(tm.vocabulary) == 3389
    accuracy = float(np.mean(tm.predict(d.texts) == d.labels))
    assert accuracy == pytest.approx(tm.net.meta["test_accuracy"], abs=1e-9)
    majority = np.mean(d.labels == 0)
    assert tm.net.meta["majority_baseline"] == pytest.approx(majority)
    assert accuracy > majority + 0.2  # 59-65 % against 36.9 %


def test_explaining_padded_lstm_sentences_together_equals_each_alone():
    tm = text.text_model(L.zoo.trained("fortunes_lstm", dtype=np.float64))
    sentences = ["The compiler crashed again.", "Congress passed the bill after a long debate in the senate.",
                 "Eat your vegetables."]
    e, ids, lengths, per = tm.explain(sentences)
    assert ids.shape == (3, 12) and lengths.tolist() == [5, 12, 4]
    for i, s in enumerate(sentences):
        e1, _, _, p1 = tm.explain([s])
        np.testing.assert_allclose(per[i, :lengths[i]], p1[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(e.output[i], e1.output[0], rtol=1e-12)
    assert (per[0, 5:] == 0).all()
    np.testing.assert_allclose(e.conservation().residual(), 0, atol=1e-9)  # biases' share accounted for


def test_other_methods_explain_the_embedded_sequence_and_sum_over_d():
    from lrpnumpy import methods
    tm = text.text_model(L.zoo.trained("fortunes_lstm", dtype=np.float64))
    ids, lengths = tm.vocabulary.encode(["the program crashed", "vote for the senator now"])
    e, per = tm.attribute(ids, lengths, methods.gradient_x_input)
    embedded = tm.net[0].forward(ids.astype(np.float64))
    with L.sequence_lengths(lengths):
        target = tm.net.forward(ids.astype(np.float64)).argmax(axis=1)
        g = methods.gradient(tm.net[1:], embedded, target).relevance
    np.testing.assert_allclose(per, (g * embedded).sum(axis=-1) * (np.arange(5) < lengths[:, None]), rtol=1e-10)
    assert np.abs(per[0, :3]).min() > 0 and (per[0, 3:] == 0).all()
    _, ig = tm.attribute(ids, lengths, methods.integrated_gradients, target=2, n=64)
    with L.sequence_lengths(lengths):  # completeness: the sum is f(x) - f(zero embedding), up to the Riemann sum
        gap = tm.net[1:].forward(embedded)[:, 2] - tm.net[1:].forward(np.zeros_like(embedded))[:, 2]
    np.testing.assert_allclose(ig.sum(axis=1), gap, rtol=0.05, atol=0.02)
    cnn = text.text_model(L.zoo.trained("fortunes_cnn", dtype=np.float64))
    _, per_cnn = cnn.attribute(ids, lengths, methods.gradient_x_input, target=1)
    emb = cnn.net[0].forward(ids.astype(np.float64))
    g = methods.gradient(cnn.net[1:], emb, 1).relevance
    np.testing.assert_allclose(per_cnn, (g * emb).sum(axis=-1) * (np.arange(5) < lengths[:, None]), rtol=1e-10)
    _, occ = tm.attribute(ids, lengths, methods.occlusion, target=2, window=1, stride=1, fill=0.0)
    for t in range(3):
        shut = ids.copy()
        shut[0, t] = 0
        np.testing.assert_allclose(occ[0, t], tm.logits(ids, lengths)[0, 2] - tm.logits(shut, lengths)[0, 2],
                                   rtol=1e-9)


# ----- training on sequences of different lengths -----

def test_fit_with_lengths_never_reads_the_padding():
    """A unidirectional LSTM trained with lengths never reads the padding id 0, so its embedding row
    gets no gradient; without lengths it does."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 6, size=40)
    ids = np.where(np.arange(6) < lengths[:, None], rng.integers(1, 8, size=(40, 6)), 0).astype(np.float64)
    y = (ids[:, 0] > 4).astype(int)

    def trained(**kw):
        net = L.Sequential(L.Embedding(8, 3, rng=0), L.LSTM(3, 4, output="last", rng=1), L.Linear(4, 2, rng=2))
        before = net[0].weight.copy()
        train.fit(net, ids, y, epochs=1, batch_size=10, **kw)
        return net, before

    net, before = trained(lengths=lengths)
    np.testing.assert_array_equal(net[0].weight[0], before[0])
    assert not np.array_equal(net[0].weight[1:], before[1:])
    unmasked, before = trained()
    assert not np.array_equal(unmasked[0].weight[0], before[0])
    with L.sequence_lengths(lengths):
        expected = net.forward(ids).argmax(axis=1)
    np.testing.assert_array_equal(train.predict(net, ids, lengths=lengths), expected)
    assert train.accuracy(net, ids, y, lengths=lengths) == np.mean(expected == y)
    with pytest.raises(ShapeError, match="lengths"):
        train.fit(net, ids, y, lengths=lengths[:3])


# ----- word heatmaps -----

def test_viz_text_colours_are_symmetric_with_white_at_zero(tmp_path):
    h = viz.text(["good", "<b>", "plain", "bad"], [2.0, 1.0, 0.0, -2.0], title="pos")
    assert h.max_abs == 2.0
    np.testing.assert_allclose(h.colours[0], [1, 0, 0])  # full red
    np.testing.assert_allclose(h.colours[3], [0, 0, 1])  # full blue
    np.testing.assert_allclose(h.colours[2], [1, 1, 1])  # white
    np.testing.assert_allclose(h.colours[1], [1, 0.5, 0.5])  # half way to red
    mirror = viz.text(["a"], [-1.0], max_abs=2.0).colours[0]
    np.testing.assert_allclose(mirror, h.colours[1][::-1])  # -x is x's colour with red and blue swapped
    assert "&lt;b&gt;" in h.html and "<b>pos</b>" in h.html and "rgb(255,255,255)" in h.html
    assert h._repr_html_() == h.html
    h.save(tmp_path / "t.html")
    assert (tmp_path / "t.html").read_text().startswith("<!DOCTYPE html>")
    fig = h.figure()
    assert any(ax.get_xlabel().startswith("relevance") for ax in fig.axes)  # the colour bar
    h.save(tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ShapeError, match="one relevance per token"):
        viz.text(["a", "b"], [1.0])
    with pytest.raises(ParameterError, match="max_abs"):
        viz.text(["a"], [1.0], max_abs=0)


# ----- word deletion -----

def test_word_deletion_against_a_hand_computed_curve():
    tm = _bag_model()
    ids, lengths = tm.vocabulary.encode(["good bad movie good", "bad movie"])
    # class 0 (pos) scores: good +2, bad -1, movie +0.5; text 0: 2 - 1 + 0.5 + 2 = 3.5, text 1: -0.5
    r = np.array([[2.0, -1.0, 0.5, 2.0], [-1.0, 0.5, 0, 0]])
    res = evaluate.word_deletion(tm, ids, r, lengths, target=0, labels=np.array([0, 1]))
    # most relevant first: good (pos 0), good (pos 3), movie, bad; then text 1: movie, bad
    np.testing.assert_allclose(res.curves, [[3.5, 1.5, -0.5, -1.0, 0.0], [-0.5, -1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(res.score(), [1.5, 0.25, -0.25, -0.5, 0.0])
    # class 1 (neg) scores: good -1.5, bad +3, movie +0.25; text 0 (label 0): neg 0.25, 1.75, 3.25, 3, 0
    # -> predicted pos, neg, neg, neg, pos (a 0-0 tie is class 0); text 1 (label 1): neg 3.25, 3, 0, 0, 0
    # -> neg, neg, pos, pos, pos
    np.testing.assert_array_equal(res.predicted, [[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    np.testing.assert_allclose(res.accuracy(), [1.0, 0.5, 0.0, 0.0, 0.5])
    least = evaluate.word_deletion(tm, ids, r, lengths, target=0, order="least")
    np.testing.assert_allclose(least.curves[0], [3.5, 4.5, 4.0, 2.0, 0.0])
    unk = evaluate.word_deletion(tm, ids, r, lengths, target=0, replace="unk", steps=2)
    np.testing.assert_allclose(unk.curves[0], [3.5, 1.6, -0.3])  # <unk> weighs 0.1
    for other in ("remove", "zero"):  # a bag of words: removing, zeroing and padding all stop counting the word
        np.testing.assert_allclose(evaluate.word_deletion(tm, ids, r, lengths, target=0, replace=other).curves,
                                   res.curves)
    tm.net[0].weight[:, 0] = 7.0  # the padding column's weight plays no part
    np.testing.assert_allclose(evaluate.word_deletion(tm, ids, r, lengths, target=0).curves, res.curves)
    np.testing.assert_allclose(res.aopc(), [np.mean([0, 2, 4, 4.5, 3.5]), np.mean([0, 0.5, -0.5, -0.5, -0.5])])
    with pytest.raises(ParameterError, match="order"):
        evaluate.word_deletion(tm, ids, r, lengths, order="top")
    with pytest.raises(ParameterError, match="replace"):
        evaluate.word_deletion(tm, ids, r, lengths, replace="blank")
    with pytest.raises(ShapeError, match="one number per token"):
        evaluate.word_deletion(tm, ids, r[:, :2], lengths)
    with pytest.raises(ParameterError, match="labels"):
        evaluate.word_deletion(tm, ids, r, lengths).accuracy()


def test_word_deletion_removes_or_zeroes_tokens_of_an_lstm_sequence():
    tm = text.text_model(L.zoo.trained("fortunes_lstm", dtype=np.float64))
    ids, lengths = tm.vocabulary.encode(["the program crashed", "vote for the senator"])
    r = np.array([[0.0, 5.0, 1.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    res = evaluate.word_deletion(tm, ids, r, lengths, target=0, replace="remove", steps=1)
    expected = tm.logits(*tm.vocabulary.encode(["the crashed", "vote for the"]))[:, 0]
    np.testing.assert_allclose(res.curves[:, 1], expected, rtol=1e-12)
    zero = evaluate.word_deletion(tm, ids, r, lengths, target=0, replace="zero", steps=1)
    embedded = tm.net[0].forward(ids.astype(np.float64))
    embedded[0, 1] = 0  # "program"
    embedded[1, 3] = 0  # "senator"
    with L.sequence_lengths(lengths):
        expected = tm.net[1:].forward(embedded)[:, 0]
    np.testing.assert_allclose(zero.curves[:, 1], expected, rtol=1e-12)
    assert not np.allclose(zero.curves[:, 1], res.curves[:, 1])
    with pytest.raises(ShapeError, match="mask"):
        tm.logits(ids, lengths, zero=np.zeros((1, 4), bool))


def test_word_deletion_curves_lrp_falls_faster_than_random_on_the_shipped_models():
    d = text.fortunes()
    pick = np.random.default_rng(0).choice(len(d.texts), 40, replace=False)
    for name in ("fortunes_bow", "fortunes_cnn"):
        tm = text.text_model(name)
        ids, lengths = tm.vocabulary.encode([d.texts[i] for i in pick], tm.length)
        curves = evaluate.word_deletion_curves(tm, ids, lengths, labels=d.labels[pick], steps=5)
        assert set(curves) == {"lrp", "sensitivity", "random"}
        aopc = {k: v.aopc().mean() for k, v in curves.items()}
        assert aopc["lrp"] > aopc["sensitivity"] > aopc["random"], (name, aopc)


# ----- the command line -----

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lrpnumpy", *args], capture_output=True, text=True)


def test_explain_text_prints_words_and_writes_html_and_png(tmp_path):
    r = _cli("explain", "fortunes_cnn", "--text", "The compiler crashed when the programmer freed memory twice.",
             "--out", str(tmp_path / "w.html"), "--npy", str(tmp_path / "r.npy"))
    assert r.returncode == 0, r.stderr
    assert "predicted 0 ('computers')" in r.stdout and "compiler" in r.stdout
    rel = np.load(tmp_path / "r.npy")
    assert rel.shape == (10,)  # the, compiler, crashed, when, the, programmer, freed, memory, twice, .
    assert "<span" in (tmp_path / "w.html").read_text()
    r = _cli("explain", "fortunes_lstm", "--text", "Zqxv the senator.", "--out", str(tmp_path / "w.png"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tokens"] == ["zqxv", "the", "senator", "."] and out["unknown"] == [True, False, False, False]
    assert out["predicted_class"] in text.fortunes().classes and len(out["relevance"]) == 4
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_text_with_another_method():
    r = _cli("explain", "fortunes_bow", "--text", "War and taxes.", "--method", "gradient_x_input", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    tm = text.text_model("fortunes_bow")
    w = tm.net[0].weight[out["target"]]
    np.testing.assert_allclose(out["relevance"], [w[tm.vocabulary.id(t)] for t in out["tokens"]], rtol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["fashion_mlp", "--text", "hello"], "not a text model"),
    (["fortunes_bow", "--text", "... !"[:0]], "no tokens"),
    (["fortunes_bow"], "inputs"),
])
def test_explain_text_bad_input_is_exit_2_and_one_line(args, message):
    r = _cli("explain", *args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
