"""Triton python-backend model: raw strings in, the encoder's token tensors out.

Copied as ``model.py`` into ``<encoder>_tokenizer/VERSION/`` beside the encoder's own
``tokenizer.json`` by ``export.ensemble.write_text_pipeline``; the ensemble ``<encoder>_text``
runs it before the encoder. It runs inside Triton's runtime environment (numpy<2,
``tokenizers``), never in the gateway's.

Input ``text`` (TYPE_STRING, dims [1]: one UTF-8 string per row). Outputs, per request:
``input_ids``, ``attention_mask``, ``token_type_ids`` (INT64 [rows, L], right-padded to the
longest text of that request; the encoder pads again across requests) and ``token_count``
(INT64 [rows, 1], the real tokens of each row, special tokens included).

All texts of all requests of one ``execute`` are tokenized with one ``encode_batch`` call. A
bad request (invalid UTF-8, an empty string, more tokens than ``max_sequence_length``) gets its
own INVALID_ARG error that names the row and what to fix; it never fails the other requests of
the batch.

Parameters (``config.pbtxt``): ``max_sequence_length`` (required), ``tokenizer_filename``
(default ``tokenizer.json``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

TOKEN_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")


class RequestError(ValueError):
    """The request is malformed; its message goes back to the client."""


def _error(message):
    """An INVALID_ARG error (a 400 for HTTP clients) where this python backend has codes."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    if code is None:  # python backends before 23.10: INTERNAL is the only code
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, params.get("tokenizer_filename") or "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(path)
        # the sentence-transformers tokenizer.json pads and truncates to 128: neither may
        # happen silently here (padding is per request, too long is the client's error)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_length = int(params["max_sequence_length"])
        if self.max_length < 2:
            raise ValueError(f"max_sequence_length must be >= 2, got {self.max_length}")
        self.pad_id = int(params.get("pad_id") or 0)

    # -- per request -----------------------------------------------------------------------
    def _texts(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "text")
        if tensor is None:
            raise RequestError("input 'text' is missing")
        values = tensor.as_numpy().reshape(-1)
        if values.size == 0:
            raise RequestError("empty batch: send at least one string")
        texts = []
        for row, value in enumerate(values):
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise RequestError(
                        f"text[{row}] is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                        "send UTF-8 encoded strings"
                    ) from None
            elif not isinstance(value, str):
                raise RequestError(f"text[{row}] is not a string; send BYTES (UTF-8) strings")
            if not value:
                raise RequestError(f"text[{row}] is empty; send non-empty strings")
            texts.append(value)
        return texts

    def _response(self, encodings):
        counts = [len(e.ids) for e in encodings]
        for row, count in enumerate(counts):
            if count > self.max_length:
                raise RequestError(
                    f"text[{row}] has {count} tokens; the model takes at most "
                    f"{self.max_length}: shorten or split it"
                )
        rows, longest = len(encodings), max(counts)
        ids = np.full((rows, longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((rows, longest), dtype=np.int64)
        types = np.zeros((rows, longest), dtype=np.int64)
        for row, (encoding, count) in enumerate(zip(encodings, counts, strict=True)):
            ids[row, :count] = encoding.ids
            mask[row, :count] = 1
            types[row, :count] = encoding.type_ids
        tensors = [
            pb_utils.Tensor(name, array)
            for name, array in zip(TOKEN_OUTPUTS, (ids, mask, types), strict=True)
        ]
        tensors.append(pb_utils.Tensor("token_count", np.asarray(counts, np.int64).reshape(-1, 1)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        responses = [None] * len(requests)
        spans, texts = [], []  # (request index, first text, number of texts)
        for i, request in enumerate(requests):
            try:
                mine = self._texts(request)
            except RequestError as exc:
                responses[i] = pb_utils.InferenceResponse(error=_error(str(exc)))
                continue
            spans.append((i, len(texts), len(mine)))
            texts.extend(mine)
        if not texts:
            return responses
        try:
            encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        except Exception:  # never seen; tokenize request by request so one cannot fail all
            encodings = None
        for i, start, count in spans:
            try:
                mine = (
                    encodings[start : start + count]
                    if encodings is not None
                    else self.tokenizer.encode_batch(texts[start : start + count])
                )
                responses[i] = self._response(mine)
            except RequestError as exc:
                responses[i] = pb_utils.InferenceResponse(error=_error(str(exc)))
            except Exception as exc:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"tokenization failed: {exc}")
                )
        return responses

    def finalize(self):
        self.tokenizer = None
