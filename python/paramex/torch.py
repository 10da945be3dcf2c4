"""paramex for PyTorch: a model's parameters trained through a paramex server.

    import torch, paramex, paramex.torch
    model = Net()                                   # the same seed on every worker
    client = paramex.Client()                       # servers, rank, world from the launcher
    trainer = paramex.torch.DistributedTrainer(model, client)
    step = trainer.resume()                         # where the job is (0 at its start)
    for x, y in batches(start=step):
        trainer.zero_grad()
        loss_fn(model(x), y).backward()
        try:
            trainer.step()                          # push p.grad, pull the new parameters
        except paramex.Aborted:                     # the server restarted from a checkpoint
            step = trainer.resume()                 # the step to compute next
            batches.seek(step)                      # the data loader goes back there too

Every parameter (``model.named_parameters()``) is a float32 tensor of the server, named
``prefix + name``. CPU parameters that are contiguous are pulled in place: their storage
*is* the buffer libparamex writes (no copy); their gradients are pushed from their own
memory. CUDA parameters are staged through pinned host buffers (one copy each way per
step). The server runs the optimizer (its ``--lr``, ``--momentum``, ``--weight-decay``):
there is no local optimizer, and every worker holds the same parameters after each step.
"""

import torch

import paramex

__all__ = ["DistributedTrainer"]


class _Param:
    """One parameter: what is pushed and where the pull lands."""

    def __init__(self, name, p):
        if p.dtype != torch.float32:
            raise paramex.InvalidArgument(f"parameter '{name}' is {p.dtype}: paramex.torch "
                                          "trains float32 parameters", 3)
        self.name, self.p = name, p
        self.in_place = p.device.type == "cpu" and p.data.is_contiguous()
        if self.in_place:
            self.host = p.data  # the parameter's own storage
        else:
            self.host = torch.empty(p.shape, dtype=torch.float32,
                                    pin_memory=p.device.type == "cuda")
        self.grad_host = torch.zeros(p.shape, dtype=torch.float32,
                                     pin_memory=p.device.type == "cuda")
        self.out = self.host.numpy()

    def grad_array(self):
        g = self.p.grad
        if g is None:  # not used this step: it contributes zeros
            self.grad_host.zero_()
            return self.grad_host.numpy()
        if g.device.type == "cpu" and g.is_contiguous() and g.dtype == torch.float32:
            return g.detach().numpy()
        self.grad_host.copy_(g.detach(), non_blocking=False)
        return self.grad_host.numpy()

    def landed(self):
        if not self.in_place:
            with torch.no_grad():
                self.p.copy_(self.host, non_blocking=False)


class DistributedTrainer:
    """Trains ``model``'s parameters through ``client`` (a joined :class:`paramex.Client`).

    Declares every parameter (its current values are the initial ones: build the model
    with the same seed on every worker, or the declarations disagree), then ``step()``
    pushes each ``p.grad`` for the current step and pulls the parameters of the next
    version into the model. ``view='bfloat16'`` is not offered: parameters stay float32.
    """

    def __init__(self, model, client, *, prefix=""):
        self.client = client
        self.params = [_Param(prefix + n, p) for n, p in model.named_parameters()]
        if not self.params:
            raise paramex.InvalidArgument("the model has no parameters", 3)
        for q in self.params:
            values = q.p.detach().to("cpu", torch.float32).contiguous().numpy()
            client.declare(q.name, values)
        self._grads = {}
        self._out = {q.name: q.out for q in self.params}
        self.step_count = 0
        self.version = 0

    def zero_grad(self):
        """Sets every parameter's gradient to zero (as an optimizer's ``zero_grad``)."""
        for q in self.params:
            if q.p.grad is not None:
                q.p.grad.detach_()
                q.p.grad.zero_()

    def step(self):
        """Pushes the gradients of step ``step_count`` and pulls version ``step_count + 1``
        into the model (one round trip). Returns the version. Raises
        :class:`paramex.Aborted` when the server restarted: call :meth:`resume`."""
        grads = {q.name: q.grad_array() for q in self.params}
        self.version = self.client.push_pull(self.step_count, grads, self._out)
        for q in self.params:
            q.landed()
        self.step_count += 1
        return self.version

    def resume(self):
        """Pulls the server's parameters into the model and returns the step to compute
        next (the job's version: 0 at its start, V after a restart from a checkpoint at V).
        Call it before the first step and after :class:`paramex.Aborted`."""
        self.step_count = self.client.resume(self._out)
        self.version = self.step_count
        for q in self.params:
            q.landed()
        return self.step_count

    def state_dict(self):
        """The trainer's state: its step and the tensors it trains (the parameters
        themselves live on the server, which checkpoints them)."""
        return {"step": self.step_count, "version": self.version,
                "tensors": [q.name for q in self.params]}

    def load_state_dict(self, state):
        """Restores :meth:`state_dict`'s step; the tensor names must be this trainer's."""
        names = [q.name for q in self.params]
        if list(state.get("tensors", [])) != names:
            raise paramex.InvalidArgument("load_state_dict: the state trains other tensors "
                                          f"({state.get('tensors')!r}, not {names!r})", 3)
        self.step_count = int(state["step"])
        self.version = int(state.get("version", self.step_count))
