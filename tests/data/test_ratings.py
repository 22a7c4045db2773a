"""The rating data sets (fedlrs.data.ratings): sizes of the shipped files, the two protocols, validation."""

import numpy as np
import pytest

from fedlrs.data.ratings import build_split, load_ratings
from fedlrs.data.realdata import DataError


def test_movielens_random_split_is_80_10_10_over_ratings():
    split = load_ratings("movielens", protocol="random", seed=0)
    assert (split.num_users, split.num_items, split.info["ratings"]) == (671, 9066, 100004)
    assert (len(split.train), len(split.validation), len(split.test)) == (80004, 10000, 10000)
    other = load_ratings("movielens", protocol="random", seed=1)
    assert not np.array_equal(split.test.ratings, other.test.ratings)
    assert split.rating_range == (0.5, 5.0)


def test_insteval_sizes_and_no_time_protocol():
    split = load_ratings("insteval")
    assert (split.num_users, split.num_items, split.info["ratings"]) == (2972, 1128, 73421)
    with pytest.raises(DataError, match="timestamps"):
        load_ratings("insteval", protocol="time")


def test_time_protocol_keeps_each_users_latest_ratings_for_test():
    users = np.repeat([10, 20], 10)
    time = np.r_[np.arange(10)[::-1], np.arange(10)]
    split = build_split("toy", users, np.arange(20) % 7, np.arange(20.0), time, protocol="time", rating_range=(0, 20))
    for user in (0, 1):
        test_times = time[np.r_[0:10] + 10 * user][np.isin(np.arange(10) + 10 * user, np.flatnonzero(np.isin(np.arange(20.0), split.test.ratings)))]
        assert sorted(test_times.tolist()) == [8, 9]
    assert len(split.validation) == 4 and len(split.train) == 12


def test_subsets_of_users_and_bad_names():
    split = load_ratings("movielens", max_users=50)
    assert split.num_users == 50 and split.num_items == 9066
    with pytest.raises(ValueError, match="unknown"):
        load_ratings("netflix")
    with pytest.raises(ValueError, match="protocol"):
        load_ratings("movielens", protocol="leave-one-out")


def test_movielens_genres_follow_the_item_index_and_make_multi_hot_rows():
    from fedlrs.data.ratings import movielens_genres

    genres = movielens_genres()
    split = load_ratings("movielens", max_users=20)
    assert len(genres.genres) == split.num_items and len(genres.names) == 20 and genres.num_features == split.num_items + 20
    # movie id 1 (the smallest id: item 0) is Toy Story: Adventure|Animation|Children|Comedy|Fantasy
    assert [genres.names[g] for g in genres.genres[0]] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    indptr, columns, values = genres.rows(split.test)
    first = columns[indptr[0]:indptr[1]]
    assert first[0] == split.test.items[0] and (first[1:] == split.num_items + genres.genres[split.test.items[0]]).all() and (values == 1).all()
    stats = genres.stats(split, split.train)
    assert stats.num_features == genres.num_features and int(stats.mask.sum()) == len(split.train)
