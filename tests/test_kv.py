"""The KV batch appends each step's keys and values in place, into room it owns; these check
that the logits equal a fresh forward over the whole sequence, and that feeding the same
batch twice (a fork) copies instead of overwriting what the other branch wrote."""

import torch

from ponder.engines import kv as kvlib


def feed(engine, batch, tokens):
    ids = torch.tensor([tokens])
    logits, after = kvlib.forward(engine.model, batch, ids, torch.ones_like(ids))
    return logits[:, -1], after


def fresh(engine, tokens):
    return feed(engine, kvlib.KVBatch.empty(1, "cpu"), tokens)[0]


def storage(batch):
    return batch.kv[0][0].untyped_storage().data_ptr()


def test_in_place_appends_match_a_fresh_forward_and_forks_do_not_clobber(engine):
    prompt = engine.tokenize("The capital of France is")
    x, y, z, w = engine.tokenize(" Paris, Lyon and Nice")[:4]
    _, b0 = feed(engine, kvlib.KVBatch.empty(1, "cpu"), prompt)
    _, b1 = feed(engine, b0, [x])  # the first append makes room
    assert b1.room > 0 and b0.room == 0
    room = b1.room
    y_logits, b2 = feed(engine, b1, [y])  # then writes into it
    assert b2.room == room - 1 and b1.room == 0 and storage(b2) == storage(b1)

    z_logits, b2_fork = feed(engine, b1, [z])  # b1 gave its room away: this copies
    assert storage(b2_fork) != storage(b2)
    w_logits, _ = feed(engine, b2, [w])  # b2's columns are untouched by the fork

    # A decode step and a fresh prefill sum in different orders: the largest gap on these
    # logits was 9.9e-5 with torch's decode attention and 1.0e-4 with the compiled loop
    # (2-core AMD EPYC); a clobbered or misplaced column moves them by ~1.
    torch.testing.assert_close(y_logits, fresh(engine, [*prompt, x, y]), atol=1e-3, rtol=0)
    torch.testing.assert_close(z_logits, fresh(engine, [*prompt, x, z]), atol=1e-3, rtol=0)
    torch.testing.assert_close(w_logits, fresh(engine, [*prompt, x, y, w]), atol=1e-3, rtol=0)


def test_room_runs_out_and_regrows_without_changing_results(engine):
    prompt = engine.tokenize("Count: one two three")
    continuation = engine.tokenize(" four five six seven eight nine ten eleven twelve") * 8
    _, batch = feed(engine, kvlib.KVBatch.empty(1, "cpu"), prompt)
    buffers = set()
    for token in continuation:  # more steps than one allocation's headroom
        logits, batch = feed(engine, batch, [token])
        buffers.add(storage(batch))
    assert len(buffers) >= 2
    # decode steps against a fresh prefill: see the tolerance above
    torch.testing.assert_close(logits, fresh(engine, [*prompt, *continuation]), atol=1e-3, rtol=0)


def test_trim_hands_its_room_to_the_trimmed_batch(engine):
    ids = torch.tensor([[0, 0, *engine.tokenize("Hello there")]])
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    _, batch = kvlib.forward(engine.model, kvlib.KVBatch.empty(1, "cpu"), ids, mask)
    _, batch = feed(engine, batch, engine.tokenize(" friend")[:1])
    room = batch.room
    trimmed = batch.trim()
    assert trimmed.length == batch.length - 2
    assert trimmed.room == room and batch.room == 0


def test_a_selection_with_room_is_decoded_in_place_and_equals_the_plain_one(engine):
    """A prefill's rows repeated for its samples go straight into buffers with room: the
    first decode step writes there instead of copying the batch once more."""
    short, long = engine.tokenize("Hello there"), engine.tokenize("Hi, how are you today?")
    pad = len(long) - len(short)
    ids = torch.tensor([[0] * pad + short, long])
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    _, batch = kvlib.forward(engine.model, kvlib.KVBatch.empty(2, "cpu"), ids, mask)
    rows = torch.tensor([0, 0, 0, 1, 1])
    roomy = batch.select(rows, with_room=True)
    plain = batch.select(rows)
    assert roomy.room > 0 and plain.room == 0
    assert roomy.shared == plain.shared
    token = engine.tokenize(" friend")[:1]
    column = torch.tensor([token] * 5)
    roomy_logits, roomy_after = kvlib.forward(engine.model, roomy, column, torch.ones_like(column))
    plain_logits, _ = kvlib.forward(engine.model, plain, column, torch.ones_like(column))
    assert storage(roomy_after) == storage(roomy)
    torch.testing.assert_close(roomy_logits, plain_logits, atol=0, rtol=0)


def test_a_selection_of_many_rows_gathers_them_as_one_copy_per_row_would():
    """Few runs copy run by run; many take one gather (and the identity one copy): the
    selected keys and values are the rows asked for, in order, either way."""
    keys = torch.randn(6, 2, 5, 4)
    for rows in ([3, 3, 3, 0], [0, 1, 2, 3, 4, 5], [5, 4, 4, 1, 0, 2, 2, 2, 3],
                 [1, 0, 3, 2, 5, 4]):
        runs = kvlib._equal_runs(rows)
        assert (len(runs) > kvlib.GATHER_RUNS) == (rows != [3, 3, 3, 0])
        got = kvlib._gather_with_room(keys, runs, room=3)
        assert got.shape == (len(rows), 2, 5, 4)
        assert torch.equal(got, keys[torch.tensor(rows)])
        assert got.untyped_storage().nbytes() == len(rows) * 2 * (5 + 3) * 4 * 4  # the room


def test_rows_that_share_one_cache_are_written_as_each_row_alone_would_be():
    """from_row_caches writes rows holding the same cache together: left-padded, every row
    equal to its own cache, empty rows zero, whatever order the shared rows come in."""
    def cache(n):
        return tuple((torch.randn(2, n, 4), torch.randn(2, n, 4)) for _ in range(3)), n

    shared, other = cache(5), cache(3)
    caches = [shared, other, shared, ((), 0), shared, other, cache(7)]
    batch = kvlib.from_row_caches(caches, "cpu")
    longest = 7
    assert batch.next_pos.tolist() == [n for _, n in caches]
    for row, (layers, n) in enumerate(caches):
        assert batch.mask[row].tolist() == [0] * (longest - n) + [1] * n
        for layer, (keys, values) in enumerate(batch.kv):
            assert not keys[row, :, : longest - n].any() and not values[row, :, : longest - n].any()
            if n:
                assert torch.equal(keys[row, :, longest - n:], layers[layer][0])
                assert torch.equal(values[row, :, longest - n:], layers[layer][1])
