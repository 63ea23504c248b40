"""Evaluation across processes: every sample counted once, the same number of batches on every
process, counts summed with ``all_reduce``, the result printed once (docs/evaluation.md).

The sampler and the loader checks are tested in this process. Two tests start two real
processes over gloo (``switchyard run --devices 2``, DDP then FSDP) running this file as the
script (``main`` below): both must print exactly the accuracy one process prints, on a dataset
of 1001 samples, which neither 2 nor the batch size divides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, Sampler, TensorDataset

from switchyard import ArgumentError, Runtime, Strategy
from switchyard.dataloading import prepare_dataloader
from switchyard.evaluation import EvaluationBatchSampler, UnevenSplitError
from switchyard.testing.subprocesses import child_environment, run

SAMPLES, BATCH, FEATURES, CLASSES = 1001, 100, 16, 5
TIMEOUT = 120


def make_data(samples: int = SAMPLES) -> TensorDataset:
    generator = torch.Generator().manual_seed(7)
    return TensorDataset(
        torch.randn(samples, FEATURES, generator=generator),
        torch.randint(0, CLASSES, (samples,), generator=generator),
    )


def make_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, CLASSES))


@torch.no_grad()
def evaluate(runtime: Runtime, model: nn.Module, loader: DataLoader) -> tuple[int, int, float]:
    """Correct predictions, samples seen and summed loss over all processes: the pattern of
    docs/evaluation.md (``loader`` set up with ``evaluation=True``)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=runtime.device)
    seen = torch.zeros((), dtype=torch.long, device=runtime.device)
    loss_sum = torch.zeros((), device=runtime.device)
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
        seen += y.numel()
    correct, seen, loss_sum = runtime.all_reduce((correct, seen, loss_sum), op="sum")
    return int(correct.item()), int(seen.item()), float(loss_sum.item())


def gather_all(runtime: Runtime, values: torch.Tensor) -> torch.Tensor:
    """Every process's ``values`` (one row per sample; processes may hold different numbers),
    concatenated: docs/evaluation.md's pattern for metrics that need every prediction."""
    counts = runtime.all_gather(torch.tensor(values.shape[0], device=values.device))
    padded = values.new_zeros((int(counts.max()), *values.shape[1:]))
    padded[: values.shape[0]] = values
    gathered = runtime.all_gather(padded)
    return torch.cat([gathered[rank, : int(n)] for rank, n in enumerate(counts)])


@torch.no_grad()
def gathered_accuracy(runtime: Runtime, model: nn.Module, loader: DataLoader) -> str:
    hits = torch.cat([model(x).argmax(dim=1) == y for x, y in loader])
    every = gather_all(runtime, hits)
    return f"{int(every.sum())}/{every.numel()}"


def report(runtime: Runtime, model: nn.Module) -> None:
    """What the script prints (once, on rank zero): the evaluation, what the training sampler
    would have counted, and the refusal of a split that would hang a collective forward."""
    loader = runtime.setup_dataloaders(DataLoader(make_data(), batch_size=BATCH), evaluation=True)
    correct, seen, loss_sum = evaluate(runtime, model, loader)
    runtime.print(f"RESULT accuracy {correct}/{seen} loss {loss_sum / seen!r}")
    runtime.print(f"RESULT gathered {gathered_accuracy(runtime, model, loader)}")
    batches = runtime.all_gather(torch.tensor(len(loader))).tolist()
    runtime.print(f"RESULT batches per process {batches}")
    padded = runtime.setup_dataloaders(DataLoader(make_data(), batch_size=BATCH))
    _, padded_seen, _ = evaluate(runtime, model, padded)
    runtime.print(f"RESULT training sampler counts {padded_seen}")
    try:
        runtime.setup_dataloaders(DataLoader(make_data(3), batch_size=1), evaluation=True)
    except ArgumentError as error:
        runtime.print(f"RESULT refused {error}")
    else:
        runtime.print("RESULT refused nothing")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategies", default="ddp,fsdp")
    args = parser.parse_args(argv)
    from switchyard_fsdp.strategy import FSDPStrategy

    # every Linear sharded on its own, so that every forward all-gathers (FSDP leaves the
    # root's parameters gathered after forward: sharding only the root would never hang)
    strategies = {"ddp": "ddp", "fsdp": FSDPStrategy(auto_wrap_policy={nn.Linear})}
    for name in args.strategies.split(","):
        # an uneven split waits in a collective: fail in seconds, not the default 10 minutes
        runtime = Runtime(accelerator="cpu", strategy=strategies[name], timeout=30)
        runtime.launch()
        runtime.print(f"RESULT strategy {name}")
        report(runtime, runtime.setup(make_model()))
        runtime.teardown()


def results(output: str) -> dict[str, dict[str, str]]:
    """The ``RESULT`` lines of each strategy's section, by their first word; a line printed by
    both processes (``print`` in place of ``runtime.print``) fails."""
    sections: dict[str, dict[str, str]] = {}
    found: dict[str, str] = {}
    for line in output.splitlines():
        if not line.startswith("RESULT "):
            continue
        _, key, rest = line.split(" ", 2)
        if key == "strategy":
            found = sections.setdefault(rest, {})
            continue
        assert key not in found, f"{key!r} printed twice (by every process?):\n{output}"
        found[key] = rest
    assert sections, output
    return sections


# -- the sampler ------------------------------------------------------------------------------


@pytest.mark.parametrize("even_batches", [True, False])
def test_every_sample_is_seen_exactly_once(even_batches: bool) -> None:
    for size in range(30):
        for batch_size in range(1, 6):
            for replicas in range(1, 5):
                try:
                    samplers = [
                        EvaluationBatchSampler(
                            range(size), batch_size, replicas, rank, even_batches=even_batches
                        )
                        for rank in range(replicas)
                    ]
                except UnevenSplitError:
                    assert even_batches
                    assert size < replicas or (batch_size == 1 and size % replicas), (
                        size,
                        batch_size,
                        replicas,
                    )
                    continue
                batches = [list(sampler) for sampler in samplers]
                seen = sorted(i for rank in batches for batch in rank for i in batch)
                assert seen == list(range(size)), (size, batch_size, replicas)
                assert all(1 <= len(b) <= batch_size for rank in batches for b in rank)
                assert [len(s) for s in samplers] == [len(b) for b in batches]
                assert [s.num_samples for s in samplers] == [sum(map(len, b)) for b in batches]
                if even_batches:
                    assert len({len(b) for b in batches}) == 1, (size, batch_size, replicas)


def test_uneven_counts_are_evened_by_smaller_last_batches() -> None:
    """201 samples in batches of 100: one process has 101 samples, the other 100, so plain
    cutting gives 2 and 1 batches (a hang under FSDP); the even split gives both 2."""
    sizes = [[len(b) for b in EvaluationBatchSampler(range(201), 100, 2, r)] for r in (0, 1)]
    assert sizes == [[100, 1], [99, 1]]
    plain = [
        [len(b) for b in EvaluationBatchSampler(range(201), 100, 2, r, even_batches=False)]
        for r in (0, 1)
    ]
    assert plain == [[100, 1], [100]]


def test_impossible_even_split_says_why_and_what_to_do() -> None:
    with pytest.raises(UnevenSplitError) as caught:
        EvaluationBatchSampler(range(3), 1, 2, 0)
    message = str(caught.value)
    assert "3 samples in batches of at most 1" in message
    assert "larger batch size" in message
    assert "even_batches=False" in message


def test_shuffle_is_one_permutation_shared_by_the_processes() -> None:
    def split(epoch: int) -> list[list[int]]:
        out = []
        for rank in range(3):
            sampler = EvaluationBatchSampler(range(50), 8, 3, rank, shuffle=True, seed=5)
            sampler.set_epoch(epoch)
            out.append([i for batch in sampler for i in batch])
        return out

    first, again, later = split(0), split(0), split(1)
    assert sorted(i for rank in first for i in rank) == list(range(50))
    assert first == again
    assert first != later
    assert first[0] != list(range(0, 50, 3))


@pytest.mark.parametrize(
    "kwargs", [{"batch_size": 0}, {"num_replicas": 0}, {"rank": 2}, {"rank": -1}]
)
def test_bad_sampler_arguments_are_refused(kwargs: dict[str, int]) -> None:
    arguments = {"batch_size": 4, "num_replicas": 2, "rank": 0} | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        EvaluationBatchSampler(range(10), **arguments)


# -- setup_dataloaders(evaluation=True) -------------------------------------------------------


def test_one_process_sees_the_loader_unchanged() -> None:
    runtime = Runtime(accelerator="cpu", devices=1)
    model = runtime.setup(make_model())
    loader = runtime.setup_dataloaders(DataLoader(make_data(), batch_size=BATCH), evaluation=True)
    assert [len(y) for _, y in loader] == [100] * 10 + [1]
    correct, seen, _ = evaluate(runtime, model, loader)
    assert seen == SAMPLES
    assert 0 < correct < SAMPLES


def test_split_for_two_processes_without_a_process_group() -> None:
    """What rank 1 of 2 gets (prepare_dataloader is given the sampler arguments the strategy
    would give): half the samples, none of rank 0's, in as many batches as rank 0."""
    ranks = [
        prepare_dataloader(
            DataLoader(make_data(), batch_size=BATCH),
            {"num_replicas": 2, "rank": rank},
            rank=rank,
            evaluation=True,
        )
        for rank in (0, 1)
    ]
    assert [len(loader) for loader in ranks] == [6, 6]
    assert [sum(len(y) for _, y in loader) for loader in ranks] == [501, 500]


def test_impossible_split_under_a_collective_forward_is_an_error_not_a_hang() -> None:
    assert Strategy.forward_is_collective is True
    with pytest.raises(ArgumentError) as caught:
        prepare_dataloader(
            DataLoader(make_data(3), batch_size=1),
            {"num_replicas": 2, "rank": 1},
            rank=1,
            evaluation=True,
            strategy_name="FSDPStrategy",
        )
    message = str(caught.value)
    assert "FSDPStrategy" in message
    assert "same number of batches" in message
    assert "larger batch size" in message
    uneven = prepare_dataloader(
        DataLoader(make_data(3), batch_size=1),
        {"num_replicas": 2, "rank": 1},
        rank=1,
        evaluation=True,
        even_batches=False,
    )
    assert len(uneven) == 1


class _Stream(IterableDataset):
    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(4))


class _EveryOther(Sampler[int]):
    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(0, 10, 2))

    def __len__(self) -> int:
        return 5


@pytest.mark.parametrize(
    ("loader", "expected"),
    [
        (lambda: DataLoader(make_data(10), batch_size=4, drop_last=True), "drop_last=False"),
        (lambda: DataLoader(_Stream(), batch_size=2), "IterableDataset"),
        (lambda: DataLoader(make_data(10), batch_size=2, sampler=_EveryOther()), "_EveryOther"),
        (lambda: DataLoader(make_data(10), batch_size=None), "batch_size"),
    ],
    ids=["drop_last", "iterable", "custom-sampler", "no-batch-size"],
)
def test_loaders_evaluation_cannot_split_are_refused_on_one_process_too(
    loader: object, expected: str
) -> None:
    runtime = Runtime(accelerator="cpu", devices=1)
    runtime.launch()
    with pytest.raises(ArgumentError, match=expected):
        runtime.setup_dataloaders(loader(), evaluation=True)  # type: ignore[operator]


def test_evaluation_with_use_distributed_sampler_false_is_refused() -> None:
    runtime = Runtime(accelerator="cpu", devices=1)
    runtime.launch()
    with pytest.raises(ArgumentError, match="Pass one of them"):
        runtime.setup_dataloaders(
            DataLoader(make_data(10), batch_size=2), evaluation=True, use_distributed_sampler=False
        )


# -- two real processes -----------------------------------------------------------------------


@pytest.mark.distributed
def test_two_processes_print_the_accuracy_of_one(tmp_path: Path) -> None:
    import contextlib
    import io

    runtime = Runtime(accelerator="cpu", devices=1)
    runtime.launch()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        runtime.print("RESULT strategy single_device")
        report(runtime, runtime.setup(make_model()))
    one = results(printed.getvalue())["single_device"]
    assert one["accuracy"].split()[0].endswith(f"/{SAMPLES}")
    assert one["training"] == f"sampler counts {SAMPLES}"
    assert one["refused"] == "nothing"
    assert one["gathered"] == one["accuracy"].split()[0]

    command = [sys.executable, "-m", "switchyard", "run", "--accelerator", "cpu"]
    command += ["--devices", "2", __file__, "--strategies", "ddp,fsdp"]
    finished = run(
        command,
        timeout=TIMEOUT,
        log=tmp_path / "log",
        env=child_environment({"OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}),
    )
    assert finished.returncode == 0, f"{finished.describe()}:\n{finished.output[-6000:]}"
    sections = results(finished.output)
    assert sorted(sections) == ["ddp", "fsdp"], finished.output[-6000:]
    for strategy, two in sections.items():
        context = f"{strategy}: {two}"
        assert two["accuracy"].split()[0] == one["accuracy"].split()[0], context
        # the loss is a float sum taken in another order: float32 rounding only
        assert float(two["accuracy"].split()[2]) == pytest.approx(
            float(one["accuracy"].split()[2]), rel=1e-6
        ), context
        assert two["gathered"] == two["accuracy"].split()[0], context
        assert two["batches"] == "per process [6, 6]", context
        # what the training sampler counts: one sample twice
        assert two["training"] == f"sampler counts {SAMPLES + 1}", context
        assert "same number of batches" in two["refused"], context


if __name__ == "__main__":
    main()
