"""Weight sync: object store vs broadcast (actors/weight_sync.py), seconds per sync for 1, 2 and 4 rollout workers.

    .venv/bin/python benchmarks/weight_sync.py                      # Qwen2-0.5B shape, fp32 (~2 GB per copy)
    .venv/bin/python benchmarks/weight_sync.py --scale 0.25 --repeats 2

A sender actor (learner rank 0's role) holds a random state dict laid out like Qwen2-0.5B (24 layers, hidden
896, vocab 151936); N receiver actors (rollout workers) hold a copy. One object-store sync is `ray.put` of the
state dict plus every receiver's `ray.get` and copy into its tensors; one broadcast sync is the header and the
flat buckets of `BroadcastMember.send`/`receive` over gloo (nccl when the actors have GPUs). Both are timed
from the driver, side by side in one process, and printed with the ratio of N workers to 1.
"""
from __future__ import annotations

import argparse
import time

import ray
import torch

from actors.weight_sync import BroadcastMember, free_port_here, layout_of, state_digest


def qwen2_shaped(scale: float = 1.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with Qwen2-0.5B's tensor shapes; `scale` shrinks the hidden sizes and vocab."""
    h, inter, vocab, layers = int(896 * scale), int(4864 * scale), int(151936 * scale), 24
    kv = max(1, h // 7)  # 2 of 14 heads of 64
    g = torch.Generator().manual_seed(seed)
    state = {"model.embed_tokens.weight": torch.randn(vocab, h, generator=g)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj.weight", (h, h)), ("self_attn.q_proj.bias", (h,)),
                            ("self_attn.k_proj.weight", (kv, h)), ("self_attn.k_proj.bias", (kv,)),
                            ("self_attn.v_proj.weight", (kv, h)), ("self_attn.v_proj.bias", (kv,)),
                            ("self_attn.o_proj.weight", (h, h)), ("mlp.gate_proj.weight", (inter, h)),
                            ("mlp.up_proj.weight", (inter, h)), ("mlp.down_proj.weight", (h, inter)),
                            ("input_layernorm.weight", (h,)), ("post_attention_layernorm.weight", (h,))):
            state[p + name] = torch.randn(*shape, generator=g)
    state["model.norm.weight"] = torch.ones(h)
    state["lm_head.weight"] = torch.randn(vocab, h, generator=g)
    return state


class _Holder(torch.nn.Module):
    """A module whose state dict is `state` (what BroadcastMember.receive copies into)."""

    def __init__(self, state):
        super().__init__()
        self.names = list(state)
        for i, t in enumerate(state.values()):
            self.register_buffer(f"t{i}", t)


@ray.remote(num_cpus=0)
class Member:
    def __init__(self, scale: float, seed: int):
        self.state = qwen2_shaped(scale, seed)
        self.holder = _Holder(self.state)
        self.group = None

    def address(self):
        return ray.util.get_node_ip_address(), free_port_here()

    def join(self, addr, port, member, size, layout, bucket_mb, name):
        self.group = BroadcastMember(addr, port, member, size, backend="gloo", device="cpu", layout=layout,
                                     bucket_bytes=int(bucket_mb * 2**20), timeout_s=600, name=name)

    def layout(self):
        return layout_of(self.holder.state_dict())

    def put(self):
        return ray.put(self.holder.state_dict())

    def load(self, refs):
        state = ray.get(refs[0])
        with torch.no_grad():
            for mine, new in zip(self.holder.state_dict().values(), state.values()):
                mine.copy_(new)

    def send(self, version):
        return self.group.send(self.holder.state_dict(), version).bytes

    def receive(self, version):
        return self.group.receive(self.holder, version).bytes

    def digest(self):
        return state_digest(self.holder.state_dict())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the hidden sizes and vocab (1: ~0.5B params)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=float, default=256.0)
    args = ap.parse_args()
    ray.init(num_cpus=max(args.workers) + 2, include_dashboard=False, log_to_driver=False)
    sender = Member.remote(args.scale, seed=1)
    layout = ray.get(sender.layout.remote())
    n_params = sum(int(torch.Size(shape).numel()) for _, _, shape in layout)
    print(f"model: {n_params / 1e9:.2f}B parameters, {n_params * 4 / 2**30:.2f} GiB fp32 per copy; "
          f"buckets of {args.bucket_mb:g} MiB; {args.repeats} syncs per cell (median)")
    rows = []
    for n in args.workers:
        receivers = [Member.remote(args.scale, seed=2) for _ in range(n)]
        addr, port = ray.get(sender.address.remote())
        ray.get([sender.join.remote(addr, port, 0, n + 1, layout, args.bucket_mb, f"bench-{n}")]
                + [r.join.remote(addr, port, i + 1, n + 1, layout, args.bucket_mb, f"bench-{n}")
                   for i, r in enumerate(receivers)])
        times = {"object_store": [], "broadcast": []}
        expected = ray.get(sender.digest.remote())
        for v in range(args.repeats):
            t0 = time.perf_counter()
            ref = ray.get(sender.put.remote())
            ray.get([r.load.remote([ref]) for r in receivers])
            times["object_store"].append(time.perf_counter() - t0)
            del ref
            t0 = time.perf_counter()
            ray.get([sender.send.remote(v)] + [r.receive.remote(v) for r in receivers])
            times["broadcast"].append(time.perf_counter() - t0)
        assert set(ray.get([r.digest.remote() for r in receivers])) == {expected}, "a receiver differs"
        rows.append((n, *(sorted(t)[len(t) // 2] for t in times.values())))
        for r in receivers:
            ray.kill(r)
    base = rows[0]
    print(f"{'workers':>7}  {'object store s':>14}  {'x vs 1':>6}  {'broadcast s':>11}  {'x vs 1':>6}")
    for n, obj, bc in rows:
        print(f"{n:>7}  {obj:>14.2f}  {obj / base[1]:>6.2f}  {bc:>11.2f}  {bc / base[2]:>6.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
