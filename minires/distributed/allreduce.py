"""Bucketed gradient allreduce, and broadcasting a model's state.

One allreduce per parameter would pay the network's latency once per tensor
(ResNet-20 has 65, most of them a few dozen numbers); one per model could not
start before the whole backward ends and needs one model-sized buffer.  So,
as torch's DDP does, parameters are packed into flat buckets of about
``bucket_mb`` MB: each step the gradients are copied into the buckets, each
bucket is summed across the ranks with one call, and the sums are copied back.
"""
import time

from ..backend import get_array_module

DEFAULT_BUCKET_MB = 4.0


def _buckets(params, bucket_bytes):
    """Consecutive runs of parameters of one dtype and backend, each run at most
    ``bucket_bytes`` (a larger parameter gets a bucket of its own)."""
    out, cur, cur_bytes, key = [], [], 0, None
    for p in params:
        k = (str(p.data.dtype), get_array_module(p.data).__name__)
        nbytes = p.data.size * p.data.dtype.itemsize
        if cur and (k != key or cur_bytes + nbytes > bucket_bytes):
            out.append(cur)
            cur, cur_bytes = [], 0
        cur.append(p)
        cur_bytes += nbytes
        key = k
    if cur:
        out.append(cur)
    return out


class GradientAllreducer:
    """``allreduce(scale)``: every ``p.grad`` <- ``scale`` x (sum over ranks of
    ``p.grad``).  A parameter without a gradient on some rank counts as zero
    there, and every rank ends with the same gradients.

    ``calls`` counts the allreduce calls made and ``seconds`` the time spent in
    them (including waiting for slower peers).
    """

    def __init__(self, params, comm, bucket_mb=DEFAULT_BUCKET_MB):
        self.params = list(params)
        if not self.params:
            raise ValueError("GradientAllreducer: got no parameters")
        self.comm = comm
        self.bucket_bytes = max(1, int(bucket_mb * 2 ** 20))
        self.buckets = []
        for group in _buckets(self.params, self.bucket_bytes):
            xp = get_array_module(group[0].data)
            bounds, start = [], 0
            for p in group:
                bounds.append((start, start + p.data.size))
                start += p.data.size
            # allocated once: the same flat buffer serves every step
            flat = xp.empty(start, dtype=group[0].data.dtype)
            self.buckets.append((group, bounds, flat))
        self.calls, self.seconds = 0, 0.0

    def allreduce(self, scale=1.0):
        t0 = time.perf_counter()
        for i, (group, bounds, flat) in enumerate(self.buckets):
            for p, (lo, hi) in zip(group, bounds):
                if p.grad is None:
                    flat[lo:hi] = 0
                else:
                    flat[lo:hi] = p.grad.reshape(-1)
            self.comm.allreduce_(flat, what=f"gradient allreduce (bucket {i + 1} of "
                                            f"{len(self.buckets)}, {flat.nbytes} bytes)")
            if scale != 1.0:
                flat *= flat.dtype.type(scale)
            for p, (lo, hi) in zip(group, bounds):
                view = flat[lo:hi].reshape(p.data.shape)
                if p.grad is None:
                    p.grad = view.copy()
                else:
                    p.grad[...] = view
            self.calls += 1
        self.seconds += time.perf_counter() - t0

    def average(self):
        """The plain mean over ranks (each rank's gradient weighted equally)."""
        self.allreduce(1.0 / self.comm.world_size)

    def __repr__(self):
        sizes = [int(flat.nbytes) for _, _, flat in self.buckets]
        return (f"GradientAllreducer({len(self.params)} parameters in {len(self.buckets)} "
                f"buckets of {sizes} bytes)")


def broadcast_state(module, comm, root=0):
    """Copy rank ``root``'s parameters and buffers into every rank's ``module``,
    in place (the optimiser and the allreducer keep their references)."""
    for name, p in module.named_parameters():
        comm.bcast_(p.data, root=root, what=f"broadcast of parameter {name}")
    for name, b in module.named_buffers():
        if b is not None:
            comm.bcast_(b, root=root, what=f"broadcast of buffer {name}")
