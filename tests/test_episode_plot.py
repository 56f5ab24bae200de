"""The episode picture: one image per support and shown query image, rows labelled by class, the pixels as loaded,
predictions marked right or wrong."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

from episodes import EpisodeSampler, FewShotDataset
from fewshot.evaluation import episode_figure, plot_episode

pytest.importorskip("matplotlib")

N_WAY, N_SHOT, N_QUERY = 3, 2, 4


def dataset(channels: int = 1) -> FewShotDataset:
    """5 classes of 8 random 6x6 images, normalised with a mean and std that are not the identity."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (40, channels, 6, 6), dtype=torch.uint8, generator=generator)
    mean, std = (0.3,) * channels, (0.2,) * channels
    names = [f"alphabet_of_magi/character{c}/rot000" for c in range(5)]
    return FewShotDataset.from_tensors(pixels, torch.arange(5).repeat_interleave(8), names, name="toy", mean=mean,
                                       std=std)


def batch_of(data: FewShotDataset):
    return EpisodeSampler(data, n_way=N_WAY, n_shot=N_SHOT, n_query=N_QUERY, seed=3).batch([0, 1])


def grid(figure) -> tuple[list, list]:
    """(support axes, query axes) of an episode figure, each in row-major order."""
    left, right = figure.subfigs
    return left.axes, right.axes


def test_one_axes_per_image_rows_named_and_pixels_as_loaded() -> None:
    data = dataset()
    batch = batch_of(data)
    figure = episode_figure(batch, task=1, dataset=data, queries=3)
    support, query = grid(figure)
    assert (len(support), len(query)) == (N_WAY * N_SHOT, N_WAY * 3)
    assert [figure.subfigs[0]._suptitle.get_text(), figure.subfigs[1]._suptitle.get_text()] == [
        "support set (2 per class)", "query set (3 of 4 per class)"]
    classes = batch.classes[1].tolist()
    # The first image of each row carries the row's label and the dataset's name of its class, wrapped after '/'.
    assert [support[row * N_SHOT].get_ylabel() for row in range(N_WAY)] == [
        f"label {row}\nalphabet_of_magi/\ncharacter{classes[row]}/rot000" for row in range(N_WAY)]
    assert figure._suptitle is None  # no title, no predictions: no heading
    # Normalisation undone: each shown image is the loaded uint8 image / 255.
    rows, query_rows, _ = EpisodeSampler(data, n_way=N_WAY, n_shot=N_SHOT, n_query=N_QUERY, seed=3).indices([1])
    expected_support = data.images[rows[0]].float() / 255
    for axes, pixels in zip(support, expected_support, strict=True):
        torch.testing.assert_close(torch.as_tensor(axes.images[0].get_array()), pixels[0], atol=1e-6, rtol=0)
    expected_query = data.images[query_rows[0]].float().view(N_WAY, N_QUERY, 1, 6, 6)[:, :3] / 255
    for axes, pixels in zip(query, expected_query.reshape(-1, 1, 6, 6), strict=True):
        torch.testing.assert_close(torch.as_tensor(axes.images[0].get_array()), pixels[0], atol=1e-6, rtol=0)


def test_predictions_are_titled_and_coloured_right_or_wrong() -> None:
    data = dataset()
    batch = batch_of(data)
    labels = batch.query_y.clone()
    labels[0, 0] = 2  # the first query of label 0 predicted as 2; every other query right
    logits = torch.nn.functional.one_hot(labels, N_WAY).float() * 5.0  # (B, queries, n_way)
    figure = episode_figure(batch, task=0, predictions=logits, title="toy learner")
    _, query = grid(figure)
    titles = [axes.get_title() for axes in query]
    assert titles == ["→ 2", *(["→ 0"] * (N_QUERY - 1)), *(["→ 1"] * N_QUERY), *(["→ 2"] * N_QUERY)]
    colours = [axes.title.get_color() for axes in query]
    assert colours == ["tab:red", *(["tab:green"] * (N_WAY * N_QUERY - 1))]
    heading = f"toy learner; {N_WAY * N_QUERY - 1} of {N_WAY * N_QUERY} queries predicted right"
    assert figure._suptitle.get_text() == heading
    # Labels instead of logits give the same picture; without a dataset, rows carry the label only and each image is
    # stretched to the full range.
    again = episode_figure(batch, task=0, predictions=labels)
    assert [axes.get_title() for axes in grid(again)[1]] == titles
    support, _ = grid(again)
    assert support[0].get_ylabel() == "label 0"
    shown = torch.as_tensor(support[0].images[0].get_array())
    assert (float(shown.min()), float(shown.max())) == (0.0, 1.0)


def test_colour_images_are_shown_in_colour(tmp_path: Path) -> None:
    data = dataset(channels=3)
    batch = batch_of(data)
    support, _ = grid(episode_figure(batch, dataset=data))
    shown = torch.as_tensor(support[0].images[0].get_array())
    assert shown.shape == (6, 6, 3)
    path = plot_episode(tmp_path / "episode.png", batch, dataset=data)
    assert path == tmp_path / "episode.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_refused_with_what_to_pass(tmp_path: Path) -> None:
    data = dataset()
    batch = batch_of(data)
    with pytest.raises(ValueError, match=r"task must be an int in \[0, 2\)"):
        episode_figure(batch, task=2)
    with pytest.raises(ValueError, match=r"predictions must be the batch's logits \(2, 12, 3\).* \(2, 12, 4\)"):
        episode_figure(batch, predictions=torch.zeros(2, 12, 4))
    with pytest.raises(ValueError, match=r"queries \(per class, shown\) must be a positive int"):
        episode_figure(batch, queries=0)
    with pytest.raises(ValueError, match="dataset 'toy' has 3 normalisation values for 1-channel images"):
        episode_figure(batch, dataset=dataset(channels=3))
    with pytest.raises(ValueError, match="plot the images, not features"):
        features = batch.__class__(batch.support_x.flatten(2), batch.support_y, batch.query_x.flatten(2),
                                   batch.query_y, batch.classes, batch.episode_ids)
        episode_figure(features)
    with pytest.raises(ValueError, match="task must be an int"):
        plot_episode(tmp_path / "bad.png", batch, task=-1)
    assert not any(tmp_path.iterdir())


def test_skipped_with_a_warning_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with caplog.at_level(logging.WARNING, logger="fewshot.evaluation.episode_plot"):
        assert plot_episode(tmp_path / "episode.png", batch_of(dataset())) is None
    assert "matplotlib is not installed" in caplog.text
    assert not any(tmp_path.iterdir())
