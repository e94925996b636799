#!/usr/bin/env python3
"""Writes fixtures/data/tokenizer.json: a tiny byte-level BPE (vocab 512) trained on the committed HTML
fixtures, with <|endoftext|> as EOS. Deterministic; run with the project venv (tokenizers==0.23.3)."""
import glob
import os
import re

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
texts = []
for p in sorted(glob.glob(os.path.join(root, "fixtures/data/html/*.html"))):
    with open(p, encoding="utf-8") as f:
        texts.append(re.sub(r"<[^>]+>", " ", f.read()))
texts += ["The quick brown fox jumps over the lazy dog. $x^2 + y^2 = z^2$ def f(x): return x"] * 10
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train_from_iterator(texts, trainer)
tok.save(os.path.join(root, "fixtures/data/tokenizer.json"))
print("vocab", tok.get_vocab_size(), "eos", tok.token_to_id("<|endoftext|>"))
