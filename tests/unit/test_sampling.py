from visiontrain.data.sampling import ResumableDistributedSampler, eval_shard


def test_training_shards_are_disjoint_and_reshuffled_each_epoch():
    ranks = [ResumableDistributedSampler(103, 2, r, seed=7) for r in range(2)]
    for s in ranks:
        s.set_epoch(0)
    a, b = (set(s.epoch_indices()) for s in ranks)
    assert not a & b and len(a) == len(b) == 51  # drop_last: 103 // 2 each, no duplicates
    first = ranks[0].epoch_indices()
    ranks[0].set_epoch(1)
    assert ranks[0].epoch_indices() != first


def test_start_offset_yields_exactly_the_rest_of_the_epoch():
    s = ResumableDistributedSampler(50, 2, 1, seed=3)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start=10)
    assert list(s) == full[10:] and len(s) == len(full) - 10
    assert [i for i, _, _ in full] == s.epoch_indices() and all(epoch == s.epoch and copy == 0
                                                                 for _, epoch, copy in full)


def test_repeated_augmentation_deals_each_samples_copies_to_consecutive_ranks_and_keeps_the_epoch_length():
    ranks = [ResumableDistributedSampler(60, 2, r, seed=7, repeats=3) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    items = [s.epoch_items() for s in ranks]
    assert [len(i) for i in items] == [30, 30]  # as without repeats: 60 // 2
    dealt = [pair for pairs in zip(*items) for pair in pairs]  # rank 0, rank 1, rank 0, ... in global order
    assert dealt[:6] == [(dealt[0][0], c) for c in range(3)] + [(dealt[3][0], c) for c in range(3)]
    counts = {index: [pair[0] for pair in dealt].count(index) for index, _ in dealt}
    assert len(counts) == 20 and set(counts.values()) == {3}  # a third of the samples, each 3 times
    ranks[0].set_epoch(3)
    assert ranks[0].epoch_items() != items[0]
    ranks[0].set_epoch(2, start=7)
    assert [(i, c) for i, _, c in ranks[0]] == items[0][7:]


def test_eval_shards_cover_every_sample_once_and_pad_equally():
    for n, world in [(110, 2), (7, 4), (5, 2), (8, 8)]:
        shards = [eval_shard(n, world, r) for r in range(world)]
        assert len({len(idx) for idx, _ in shards}) == 1  # equal batch counts on every rank
        counted = [i for idx, valid in shards for i, v in zip(idx, valid) if v]
        assert sorted(counted) == list(range(n))
