"""Stand-ins for the model in the decoder and estimator tests: a recorder and a shifted-head oracle."""

from types import SimpleNamespace

import torch


class Recorder(torch.nn.Module):
    """Wraps a model and keeps every input_ids [B, L] it is asked to forward."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config, self.inputs = model, model.config, []

    def forward(self, input_ids, **kwargs):
        self.inputs.append(input_ids.clone())
        return self.inner(input_ids=input_ids, **kwargs)


class Oracle(torch.nn.Module):
    """Logits built to predict target[:, j + shift] at position j: shift=1 is the shifted head, 0 is off by one.

    A forward over several passes of the batch (input_ids [passes*B, L]) gets the prediction once per pass.
    """

    def __init__(self, target, vocab, mask_id, shift):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # generate() reads the device from a parameter
        self.config = SimpleNamespace(mask_token_id=mask_id)
        self.target, self.vocab, self.shift = target, vocab, shift

    def forward(self, input_ids, logits_to_keep=0, **_):
        passes = input_ids.shape[0] // self.target.shape[0]
        predicted = torch.roll(self.target, -self.shift, dims=1).repeat(passes, 1)  # [passes*B, L]
        logits = torch.nn.functional.one_hot(predicted, self.vocab).float() * 20  # [passes*B, L, V]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


class Flat(torch.nn.Module):
    """The same logits at every position (token `token` favoured over a flat rest, never confident): every
    masked position ties with every other on any confidence. Takes logits_to_keep as a count or as indices."""

    def __init__(self, vocab, token, mask_id=None):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the decoders read the device from a parameter
        self.config = SimpleNamespace(mask_token_id=mask_id)
        self.row = torch.zeros(vocab).index_fill(0, torch.tensor([token]), 1.0)  # [V]

    def forward(self, input_ids, logits_to_keep=0, **_):
        if isinstance(logits_to_keep, torch.Tensor):
            kept = len(logits_to_keep)
        else:
            kept = logits_to_keep or input_ids.shape[1]
        return SimpleNamespace(logits=self.row.expand(input_ids.shape[0], kept, -1).clone())
