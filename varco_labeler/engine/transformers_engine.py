"""The in-process engine: a VARCO-VISION checkpoint loaded once with transformers.

Imports torch; only the GPU worker and the embedded mode import this module.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BitsAndBytesConfig,
    LogitsProcessor,
    LogitsProcessorList,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from varco_labeler.engine import progress
from varco_labeler.engine.base import Engine, Request, Result
from varco_labeler.engine.confidence import Token, region_scores
from varco_labeler.engine.profiles import Profile, profile_for
from varco_labeler.engine.profiles import model_version as default_version
from varco_labeler.varco import clean_model_text, parse

log = logging.getLogger(__name__)


class TransformersEngine(Engine):
    """Greedy batched generation with ``AutoModelForImageTextToText``.

    The whole model goes on one device by default (``device_map={"": device}``): with
    ``device_map="auto"`` VARCO-VISION-2.0 was seen to ignore the image. Pass ``device_map`` to
    shard a model that does not fit, and check that different images still give different answers.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        device_map: str | dict | None = None,
        attn_implementation: str | None = None,
        load_in_4bit: bool = False,
        load_in_8bit: bool = False,
        local_files_only: bool = False,
        max_batch_size: int = 8,
        profile: Profile | None = None,
        model_version: str | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.profile = profile or profile_for(model)
        self.device = torch.device(device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
        self.max_batch_size = max_batch_size
        options: dict = {
            "dtype": dtype,
            "device_map": device_map or {"": str(self.device)},
            "local_files_only": local_files_only,
        }
        if attn_implementation:
            options["attn_implementation"] = attn_implementation
        quantization = _quantization(load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
        if quantization is not None:
            options["quantization_config"] = quantization
        started = time.perf_counter()
        self.model = AutoModelForImageTextToText.from_pretrained(model, **options).eval()
        self.processor = AutoProcessor.from_pretrained(model, local_files_only=local_files_only)
        # Batches need left padding (generation continues at the right edge); the published
        # 14B-HF tokenizer does not set it.
        self.processor.tokenizer.padding_side = "left"
        self.end_of_turn_ids = _end_of_turn_ids(self.model, self.processor.tokenizer)
        self.model_version = default_version(model, model_version)
        log.info("loaded %s in %.1f s", self.model_version, time.perf_counter() - started)

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        """Batches of up to ``max_batch_size`` requests sharing one token limit."""
        results: dict[int, Result] = {}
        by_limit: dict[int, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            limit = request.max_new_tokens or self.profile.max_new_tokens_for(request.task)
            by_limit[limit].append(index)
        for limit, indices in by_limit.items():
            # The batch size may shrink while we go (out of memory), so slice as we go.
            while indices:
                chunk, indices = indices[: self.max_batch_size], indices[self.max_batch_size :]
                batch_results = self._generate_splitting([requests[i] for i in chunk], limit)
                for index, result in zip(chunk, batch_results, strict=True):
                    results[index] = result
        return [results[index] for index in range(len(requests))]

    def _generate_splitting(self, requests: list[Request], limit: int) -> list[Result]:
        """Generate; on CUDA out-of-memory, halve the batch, retry, and keep the smaller size.

        A single request that does not fit still raises: nothing smaller can be tried.
        """
        try:
            return self._generate_batch(requests, limit)
        except torch.OutOfMemoryError:
            if len(requests) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(requests) // 2
            self.max_batch_size = min(self.max_batch_size, half)
            log.warning("out of memory at batch %d; continuing with %d", len(requests), half)
            first = self._generate_splitting(requests[:half], limit)
            return first + self._generate_splitting(requests[half:], limit)

    @torch.inference_mode()
    def _generate_batch(self, requests: list[Request], limit: int) -> list[Result]:
        started = time.perf_counter()
        images = [self.profile.prepare_image(r.image, r.task) for r in requests]
        texts = [
            self.processor.apply_chat_template(
                self.profile.conversation(r.prompt), add_generation_prompt=True
            )
            for r in requests
        ]
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = inputs.to(self.model.device, self.model.dtype)  # dtype applies to floats only
        recorder = _ChosenTokenLogProbs()
        output = self.model.generate(
            **inputs,
            max_new_tokens=limit,
            do_sample=False,
            logits_processor=LogitsProcessorList([recorder, _ReportEachStep()]),
            return_dict_in_generate=True,
            pad_token_id=self.processor.tokenizer.pad_token_id,
        )
        generated = output.sequences[:, inputs["input_ids"].shape[1] :]
        log_probs = recorder.finish(generated).cpu()
        generated = generated.cpu()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        seconds = time.perf_counter() - started
        return [
            self._result(request, generated[row], log_probs[row], prompt_tokens[row], seconds)
            for row, request in enumerate(requests)
        ]

    def _result(
        self,
        request: Request,
        ids: torch.Tensor,
        log_probs: torch.Tensor,
        prompt_tokens: int,
        seconds: float,
    ) -> Result:
        ids_list = ids.tolist()
        length = next(
            (i + 1 for i, token in enumerate(ids_list) if token in self.end_of_turn_ids),
            len(ids_list),
        )
        ids_list = ids_list[:length]
        probabilities = log_probs[:length].exp().tolist()
        tokens = [
            Token(piece, probability)
            for piece, probability in zip(self._token_pieces(ids_list), probabilities, strict=True)
        ]
        # One text for both the parse and the scores, so token offsets line up with items.
        raw = clean_model_text(b"".join(t.piece for t in tokens).decode("utf-8", errors="replace"))
        parsed = parse(raw)
        parsed, scores = self.profile.postprocess(
            parsed, region_scores(tokens, parsed), request.task
        )
        return Result(
            raw=raw,
            parsed=parsed,
            region_scores=scores,
            prompt_tokens=prompt_tokens,
            completion_tokens=length,
            seconds=seconds,
        )

    def _token_pieces(self, ids: list[int]) -> list[bytes]:
        """The exact bytes each token adds to the output (byte-level BPE; tags are added tokens)."""
        tokenizer = self.processor.tokenizer
        pieces = []
        for token_id, token in zip(ids, tokenizer.convert_ids_to_tokens(ids), strict=True):
            added = self._added_tokens.get(token_id)
            if added is not None:
                pieces.append(added.encode())
            elif all(char in self._byte_decoder for char in token):
                pieces.append(bytes(self._byte_decoder[char] for char in token))
            else:  # not a byte-level vocabulary: best effort
                pieces.append(tokenizer.decode([token_id]).encode())
        return pieces

    @cached_property
    def _byte_decoder(self) -> dict[str, int]:
        return {char: byte for byte, char in bytes_to_unicode().items()}

    @cached_property
    def _added_tokens(self) -> dict[int, str]:
        decoder = self.processor.tokenizer.added_tokens_decoder
        return {token_id: added.content for token_id, added in decoder.items()}


class _ReportEachStep(LogitsProcessor):
    """Reports progress at every generation step: a CUDA call that never returns stops it, and
    the worker's watchdog sees the job stall (see engine.progress)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        progress.report()
        return scores


class _ChosenTokenLogProbs(LogitsProcessor):
    """Records log p(chosen token) at every step, from the distribution the choice was made from.

    ``output_scores`` would keep a vocabulary-sized row per step and sequence (gigabytes for a 4096
    token OCR answer with a 152k vocabulary); this keeps one row per sequence and reads the chosen
    token at the next step. Appended last, it sees the scores after generate's own processors.
    """

    def __init__(self) -> None:
        self._steps: list[torch.Tensor] = []
        self._previous: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._previous is not None:
            self._steps.append(self._chosen(input_ids[:, -1]))
        self._previous = scores.float().log_softmax(dim=-1)
        return scores

    def _chosen(self, token_ids: torch.Tensor) -> torch.Tensor:
        assert self._previous is not None
        return self._previous.gather(1, token_ids[:, None]).squeeze(1)

    def finish(self, generated: torch.Tensor) -> torch.Tensor:
        """Log-probabilities, shaped like ``generated`` (batch, new tokens)."""
        if generated.shape[1] > len(self._steps):
            self._steps.append(self._chosen(generated[:, -1]))
        if not self._steps:
            return torch.zeros(generated.shape, dtype=torch.float32)
        return torch.stack(self._steps, dim=1)


def _quantization(*, load_in_4bit: bool, load_in_8bit: bool) -> BitsAndBytesConfig | None:
    if load_in_4bit and load_in_8bit:
        raise ValueError("choose one of load_in_4bit and load_in_8bit")
    if not (load_in_4bit or load_in_8bit):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(
            "4-bit/8-bit loading needs bitsandbytes and a CUDA GPU: pip install bitsandbytes"
        )
    return BitsAndBytesConfig(load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)


def _end_of_turn_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    """Where an answer ends: the generation config's EOS ids, ``<|im_end|>`` and padding."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    vocab = tokenizer.get_vocab()
    ids.update(
        vocab[t] for t in ("<|im_end|>", tokenizer.eos_token, tokenizer.pad_token) if t in vocab
    )
    return ids
