"""Tests of the Grain pipeline: coverage, packing, resumption, host sharding, eval batches.

References are independent of the pipeline: the raw texts of `load_texts`, decoded back from
the batches with the tokenizer (whose round trip is tested in test_tokenizer.py), and lengths
counted by brute force.
"""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest

from seq2seq_jax import data
from seq2seq_jax.data import batching
from seq2seq_jax.data import config as config_lib

ROWS = 16
MODES = ("pad", "bucket", "pack")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def make_config(tfds_dir: str, **overrides):
    c = data.default_data_config()
    c.tfds_data_dir = tfds_dir
    c.num_train_examples = 300
    c.num_validation_examples = 70
    c.num_test_examples = 20
    c.max_source_length = 40
    c.max_target_length = 12
    c.prefetch = 0
    c.bucket_window_batches = 4
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def tok(tfds_dir):
    pairs = data.load_texts(make_config(tfds_dir), "train")
    return data.CharTokenizer.train([t for p in pairs for t in p])


def row_examples(batch, side: str, eos_id: int) -> list[list[np.ndarray]]:
    """Splits each row into its examples, checking segment ids and positions on the way."""
    ids, seg, pos = (batch[side], batch[f"{side}_segmentation"], batch[f"{side}_position"])
    rows = []
    for r in range(ids.shape[0]):
        n_real = int((seg[r] > 0).sum())
        assert (seg[r, n_real:] == 0).all() and (ids[r, n_real:] == 0).all()
        assert (pos[r, n_real:] == 0).all()
        examples = []
        for s in range(1, int(seg[r].max(initial=0)) + 1):
            where = np.flatnonzero(seg[r] == s)
            assert where.size and (np.diff(where) == 1).all(), "segment not contiguous"
            assert (pos[r, where] == np.arange(where.size)).all(), "positions must restart at 0"
            example = ids[r, where]
            assert example[-1] == eos_id and (example[:-1] != eos_id).all()
            assert (example != 0).all()
            examples.append(example)
        assert sum(len(e) for e in examples) == n_real, "segments must be numbered 1..n"
        rows.append(examples)
    return rows


def decode_batch(batch, tok) -> list[tuple[str, str]]:
    """Every (source, target) example of a batch, in row order, after checking its layout."""
    for key in data.BATCH_KEYS:
        assert batch[key].dtype == np.int32 and batch[key].shape[0] == ROWS
    sources = row_examples(batch, "inputs", tok.eos_id)
    targets = row_examples(batch, "targets", tok.eos_id)
    pairs = []
    for src_row, tgt_row in zip(sources, targets, strict=True):
        assert len(src_row) == len(tgt_row), "a packed example was split"
        pairs += [(tok.decode(s), tok.decode(t)) for s, t in zip(src_row, tgt_row, strict=True)]
    return pairs


def fits(pair, tok, config) -> bool:
    return (
        len(tok.encode(pair[0])) + 1 <= config.max_source_length
        and len(tok.encode(pair[1])) + 1 <= config.max_target_length
    )


@pytest.mark.parametrize("mode", MODES)
def test_every_example_exactly_once_per_epoch(tfds_dir, tok, mode):
    config = make_config(tfds_dir, batching=mode, max_source_length=24)  # some too long
    texts = data.load_texts(config, "train")
    expected = [p for p in texts if fits(p, tok, config)]
    assert 0 < len(expected) < len(texts)
    it = data.make_train_iterator(config, tok, tok, batch_size=ROWS, seed=3, num_epochs=1)
    seen, shapes = [], set()
    for batch in it:
        seen += decode_batch(batch, tok)
        shapes.add((batch["inputs"].shape[1], batch["targets"].shape[1]))
    assert collections.Counter(seen) == collections.Counter(expected)
    assert it.get_state()["examples_read"] == len(texts)
    assert it.get_state()["examples_overlength"] == len(texts) - len(expected)
    boundaries = [config_lib.bucket_boundaries(config, n) for n in (24, 12)]
    if mode == "bucket":
        assert all(s in boundaries[0] and t in boundaries[1] for s, t in shapes)
    else:
        assert shapes == {(24, 12)}


def test_pack_fills_rows(tfds_dir, tok):
    config = make_config(tfds_dir, batching="pack", max_target_length=40)
    it = data.make_train_iterator(config, tok, tok, batch_size=ROWS, seed=0)
    batch = next(it)
    assert batch["inputs_segmentation"].max() >= 2, "rows hold several examples"
    assert (batch["inputs"] > 0).mean() > 0.6


def test_pack_is_first_fit_in_stream_order(tfds_dir, tok):
    """'pack' (Grain's FirstFitPackIterDataset) against a brute-force first fit of the stream.

    'pad' reads the same stream (same shuffle, same filter) one example a row, so its rows in
    order are the stream; each packed batch must be what first fit makes of it: every example
    in the first row with room on both sides, a batch closed by the first example that fits
    no row (which starts the next one), rows of the max lengths.
    """
    overrides = dict(max_source_length=24, max_target_length=30)  # Some examples filtered.
    config = make_config(tfds_dir, batching="pack", **overrides)
    packed = list(data.make_train_iterator(config, tok, tok, batch_size=4, seed=9, num_epochs=1))
    padded = data.make_train_iterator(
        make_config(tfds_dir, batching="pad", **overrides),
        tok,
        tok,
        batch_size=4,
        seed=9,
        num_epochs=1,
    )
    stream = [
        (s[0], t[0])
        for b in padded
        for s, t in zip(
            row_examples(b, "inputs", tok.eos_id),
            row_examples(b, "targets", tok.eos_id),
            strict=True,
        )
        if s
    ]
    expected, rows, free = [], None, None
    for example in stream:
        need = np.array([len(example[0]), len(example[1])])
        fits = [] if rows is None else np.flatnonzero((free >= need).all(axis=1))
        if len(fits) == 0:
            if rows is not None:
                expected.append(rows)
            rows, free = [[] for _ in range(4)], np.array([[24, 30]] * 4)
            fits = [0]
        rows[fits[0]].append(example)
        free[fits[0]] -= need
    expected.append(rows)
    assert len(packed) == len(expected) > 1
    for batch, rows in zip(packed, expected, strict=True):
        assert batch["inputs"].shape == (4, 24) and batch["targets"].shape == (4, 30)
        got = zip(
            row_examples(batch, "inputs", tok.eos_id),
            row_examples(batch, "targets", tok.eos_id),
            strict=True,
        )
        for (sources, targets), want in itertools.zip_longest(got, rows, fillvalue=[]):
            assert [s.tolist() for s in sources] == [s.tolist() for s, _ in want]
            assert [t.tolist() for t in targets] == [t.tolist() for _, t in want]


def test_truncate_keeps_eos_and_counts(tfds_dir, tok):
    config = make_config(tfds_dir, batching="pad", overlength="truncate", max_source_length=10)
    texts = data.load_texts(config, "train")
    it = data.make_train_iterator(config, tok, tok, batch_size=ROWS, seed=0, num_epochs=1)
    sources = [s for batch in it for s, _ in decode_batch(batch, tok)]
    assert sorted(sources) == sorted(s[:9] for s, _ in texts)
    too_long = sum(not fits(p, tok, config) for p in texts)
    assert it.get_state()["examples_overlength"] == too_long > 0


def take(it, n):
    return list(itertools.islice(it, n))


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("mode", MODES)
def test_resume_from_state_across_epochs(tfds_dir, tok, mode):
    config = make_config(tfds_dir, batching=mode, prefetch=2, max_target_length=40)
    kwargs = dict(batch_size=ROWS, seed=5)
    reference_it = data.make_train_iterator(config, tok, tok, **kwargs)
    reference, states = [], []
    for batch in itertools.islice(reference_it, 40):
        reference.append(batch)
        states.append(reference_it.get_state())
    # First batch k whose state is past the first epoch (300 examples).
    boundary = next(k for k, s in enumerate(states, 1) if s["examples_read"] >= 300)
    assert boundary < 35
    for k in (3, boundary - 1, boundary, boundary + 1):
        it = data.make_train_iterator(config, tok, tok, **kwargs)
        take(it, k)
        state = it.get_state()
        assert state == states[k - 1]
        resumed = data.make_train_iterator(config, tok, tok, **kwargs)
        resumed.set_state(state)
        assert_same_batches(take(resumed, 40 - k), reference[k:])


def test_seeds(tfds_dir, tok):
    config = make_config(tfds_dir, batching="bucket")
    a = take(data.make_train_iterator(config, tok, tok, batch_size=ROWS, seed=1), 3)
    b = take(data.make_train_iterator(config, tok, tok, batch_size=ROWS, seed=1), 3)
    c = take(data.make_train_iterator(config, tok, tok, batch_size=ROWS, seed=2), 3)
    assert_same_batches(a, b)
    assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("mode", MODES)
def test_two_hosts_disjoint_and_covering(tfds_dir, tok, mode):
    config = make_config(tfds_dir, batching=mode)
    texts = data.load_texts(config, "train")
    per_host = []
    for p in range(2):
        it = data.make_train_iterator(
            config,
            tok,
            tok,
            batch_size=ROWS,
            seed=7,
            num_epochs=1,
            process_index=p,
            process_count=2,
        )
        per_host.append(list(it))
    seen = [collections.Counter(e for b in host for e in decode_batch(b, tok)) for host in per_host]
    assert not set(seen[0]) & set(seen[1])
    assert seen[0] + seen[1] == collections.Counter(texts)
    if mode == "bucket":  # Every step has the same global shape on both hosts.
        assert len(per_host[0]) == len(per_host[1])
        for b0, b1 in zip(*per_host, strict=True):
            assert b0["inputs"].shape == b1["inputs"].shape
            assert b0["targets"].shape == b1["targets"].shape


def test_orbax_checkpoint_manager_roundtrip(tfds_dir, tok, tmp_path):
    grain = pytest.importorskip("grain")
    ocp = pytest.importorskip("orbax.checkpoint")
    config = make_config(tfds_dir, batching="bucket", prefetch=2)
    kwargs = dict(batch_size=ROWS, seed=11)
    reference = take(data.make_train_iterator(config, tok, tok, **kwargs), 30)
    it = data.make_train_iterator(config, tok, tok, **kwargs)
    take(it, 25)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(
            25,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave({"w": np.arange(4.0)}),
                data_iter=grain.checkpoint.CheckpointSave(it),
            ),
        )
        manager.wait_until_finished()
    resumed = data.make_train_iterator(config, tok, tok, **kwargs)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        restored = manager.restore(
            25,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore({"w": np.zeros(4)}),
                data_iter=grain.checkpoint.CheckpointRestore(resumed),
            ),
        )
    np.testing.assert_array_equal(restored["params"]["w"], np.arange(4.0))
    assert_same_batches(take(resumed, 5), reference[25:])


@pytest.mark.parametrize("mode", ["pad", "bucket"])
@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_split_in_order(tfds_dir, tok, mode, process_count):
    config = make_config(tfds_dir, batching=mode)
    texts = data.load_texts(config, "validation")
    hosts = [
        list(
            data.make_eval_batches(
                config,
                tok,
                tok,
                split="validation",
                batch_size=ROWS,
                process_index=p,
                process_count=process_count,
            )
        )
        for p in range(process_count)
    ]
    assert len({len(h) for h in hosts}) == 1
    assert len(hosts[0]) == -(-len(texts) // (ROWS * process_count))
    rows = []
    for step in zip(*hosts, strict=True):
        assert len({b["inputs"].shape for b in step}) == 1, "same shapes on every host"
        for b in step:  # Concatenated in process order.
            rows += [
                (tok.decode(s), tok.decode(t)) if s.any() else None
                for s, t in zip(b["inputs"], b["targets"], strict=True)
            ]
    assert rows[: len(texts)] == texts
    assert all(r is None for r in rows[len(texts) :]), "padding rows are all zero"
    if mode == "pad":
        assert hosts[0][0]["inputs"].shape == (ROWS, config.max_source_length)


def test_eval_max_examples_and_truncation(tfds_dir, tok):
    config = make_config(tfds_dir, batching="pad", max_source_length=8)
    batches = data.make_eval_batches(
        config, tok, tok, split="validation", batch_size=ROWS, max_examples=20
    )
    assert len(batches) == 2
    texts = data.load_texts(config, "validation", max_examples=20)
    decoded = [tok.decode(s) for b in batches for s in b["inputs"] if s.any()]
    assert decoded == [s[:7] for s, _ in texts]


def test_dataset_smaller_than_one_batch(tfds_dir, tok):
    config = make_config(tfds_dir)
    with pytest.raises(ValueError, match=r"dates:train has 300 examples, fewer than one batch"):
        data.make_train_iterator(config, tok, tok, batch_size=200, seed=0, process_count=2)


def test_all_examples_too_long(tfds_dir, tok):
    config = make_config(tfds_dir, max_target_length=3, batching="pad")
    it = data.make_train_iterator(config, tok, tok, batch_size=ROWS, seed=0)
    with pytest.raises(ValueError, match="every example is longer than"):
        next(it)


def test_tokenized_cache_changes_nothing(tfds_dir, tok):
    config = make_config(tfds_dir, batching="bucket")
    cached = take(data.make_train_iterator(config, tok, tok, batch_size=ROWS, seed=4), 45)
    config.cache_max_examples = 0
    uncached = take(data.make_train_iterator(config, tok, tok, batch_size=ROWS, seed=4), 45)
    assert_same_batches(cached, uncached)  # 45 batches: more than two epochs.


@pytest.mark.parametrize("mode", MODES)
def test_restore_with_other_batch_size_resumes_nearby(tfds_dir, tok, mode):
    config = make_config(tfds_dir, batching=mode)
    it = data.make_train_iterator(config, tok, tok, batch_size=ROWS, seed=2)
    take(it, 6)
    state = it.get_state()
    wider = data.make_train_iterator(config, tok, tok, batch_size=2 * ROWS, seed=2)
    wider.set_state(state)
    batch = next(wider)
    assert batch["inputs"].shape[0] == 2 * ROWS
    reference = data.make_train_iterator(config, tok, tok, batch_size=ROWS, seed=2)
    seen_before = collections.Counter()
    for b in take(reference, 6 if mode == "pad" else 4):  # 'bucket': up to the saved window.
        seen_before.update(map(tuple, b["inputs"]))
    assert not seen_before & collections.Counter(map(tuple, batch["inputs"]))


# --- Token-budget batches (data.tokens_per_batch).


def test_token_budget_rows_table():
    table = batching.token_budget_rows((8, 12, 16, 40), 200, max_rows=24, multiple=4)
    assert table == {8: 24, 12: 16, 16: 12, 40: 4}  # 200 // 8 = 25 > 24 rows; 200 // 12 = 16
    for length, rows in table.items():
        assert rows * length <= 200 and rows % 4 == 0
    with pytest.raises(ValueError, match="tokens_per_batch=100.*length 40"):
        batching.token_budget_rows((8, 40), 100, max_rows=24, multiple=4)


def _random_examples(rng, n, max_lengths):
    return [
        (
            np.ones(rng.integers(1, max_lengths[0] + 1), np.int32) * (i + 1),
            np.ones(rng.integers(1, max_lengths[1] + 1), np.int32) * (i + 1),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("seed,padding", [(0, "side"), (1, "side"), (2, "class"), (3, "class")])
def test_token_budget_groups_brute_force(seed, padding):
    rng = np.random.default_rng(seed)
    max_lengths = (30, 20)
    lengths = (6, 8, 12, 16, 24, 30)
    table = batching.token_budget_rows(lengths, 240, max_rows=32, multiple=2)
    examples = _random_examples(rng, 500, max_lengths)
    groups = batching.token_budget_groups(examples, table, max_lengths, rng, padding)
    seen = [int(e[0][0]) for group, _, _ in groups for e in group]
    assert sorted(seen) == list(range(1, 501)), "every example exactly once"
    not_full = 0
    shapes = set()
    for group, (s, t), rows in groups:
        longest = [max(len(e[side]) for e in group) for side in (0, 1)]
        assert s >= longest[0] and t >= longest[1]
        if padding == "side":
            assert (s, t) == tuple(
                min(min(x for x in lengths if x >= n), m)
                for n, m in zip(longest, max_lengths, strict=True)
            )
        else:  # Both sides padded to the batch's class: one shape per class.
            length = next(x for x in lengths if table[x] == rows and x >= max(longest))
            assert (s, t) == (min(length, 30), min(length, 20))
        shapes.add((rows, s, t))
        assert rows * max(s, t) <= 240 and 1 <= len(group) <= rows
        classes = {min(x for x in lengths if x >= max(len(e[0]), len(e[1]))) for e in group}
        # Rows of the class the batch was cut in: its examples' own, or a larger one they moved
        # up into.
        assert rows in {table[x] for x in lengths if x >= max(classes)}
        not_full += len(group) < rows
    assert not_full <= 1, "only the window's last batch may have empty rows"
    if padding == "class":
        assert len(shapes) <= len(lengths)


def test_token_budget_batches_cover_epoch_resume_and_hosts(tfds_dir, tok):
    config = make_config(
        tfds_dir,
        batching="bucket",
        tokens_per_batch=320,
        max_source_length=40,
        max_target_length=40,
    )
    boundaries = config_lib.length_classes(config)
    assert boundaries == (8, 10, 12, 14, 16, 20, 24, 28, 32, 40)  # Four per octave.
    table = batching.token_budget_rows(boundaries, 320, max_rows=ROWS * 2, multiple=2)
    texts = data.load_texts(config, "train")
    kwargs = dict(batch_size=ROWS, seed=3, row_multiple=2)
    per_host = []
    for p in range(2):
        it = data.make_train_iterator(
            config, tok, tok, num_epochs=1, process_index=p, process_count=2, **kwargs
        )
        per_host.append(list(it))
    assert len(per_host[0]) == len(per_host[1])
    seen = collections.Counter()
    for b0, b1 in zip(*per_host, strict=True):
        for key in data.BATCH_KEYS:
            assert b0[key].shape == b1[key].shape, "hosts must agree on every shape"
        rows = 2 * b0["inputs"].shape[0]
        length = max(b0["inputs"].shape[1], b0["targets"].shape[1])
        assert rows in table.values() and rows <= table[length]
        for b in (b0, b1):
            pairs = [
                (tok.decode(s[0]), tok.decode(t[0]))
                for s, t in zip(
                    row_examples(b, "inputs", tok.eos_id),
                    row_examples(b, "targets", tok.eos_id),
                    strict=True,
                )
                if s
            ]
            seen.update(pairs)
    assert seen == collections.Counter(texts)
    # Exact resume from a state in the middle of a window (single host).
    reference_it = data.make_train_iterator(config, tok, tok, **kwargs)
    reference = take(reference_it, 12)
    it = data.make_train_iterator(config, tok, tok, **kwargs)
    take(it, 5)
    resumed = data.make_train_iterator(config, tok, tok, **kwargs)
    resumed.set_state(it.get_state())
    assert_same_batches(take(resumed, 7), reference[5:])


def test_token_budget_padding_below_fixed_rows(tfds_dir, tok):
    """Token budgets pad less than fixed rows bucketed the old way (target positions)."""

    def padding(**overrides):
        config = make_config(
            tfds_dir,
            batching="bucket",
            max_source_length=40,
            max_target_length=40,
            bucket_window_batches=8,
            **overrides,
        )
        batches = list(
            data.make_train_iterator(config, tok, tok, batch_size=ROWS, seed=0, num_epochs=1)
        )
        real = sum(int((b["targets"] != 0).sum()) for b in batches)
        return 1 - real / sum(b["targets"].size for b in batches)

    assert padding(tokens_per_batch=320) < padding()


def test_token_budget_config_errors(tfds_dir):
    with pytest.raises(ValueError, match="tokens_per_batch=64 needs batching='bucket'"):
        config_lib.validate_data_config(make_config(tfds_dir, batching="pad", tokens_per_batch=64))
    with pytest.raises(ValueError, match="tokens_per_batch must be an int >= 0"):
        config_lib.validate_data_config(make_config(tfds_dir, tokens_per_batch=-1))
    with pytest.raises(ValueError, match="token_budget_padding must be 'class' or 'side'"):
        config_lib.validate_data_config(
            make_config(tfds_dir, tokens_per_batch=64, token_budget_padding="both")
        )
