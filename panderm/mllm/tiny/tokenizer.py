"""The byte-level BPE tokenizer every tiny model shares, trained offline on a small built-in corpus."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

_CORPUS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are an expert dermatologist. Answer the question about the image.",
    "What is the most likely diagnosis of this skin lesion?",
    "Is this lesion benign or malignant? Answer with one word.",
    "The lesion is a melanocytic nevus with regular borders and uniform pigmentation.",
    "Melanoma often shows asymmetry, irregular borders, several colours and a diameter over 6 mm.",
    "Basal cell carcinoma: pearly papule with arborising vessels and ulceration.",
    "Seborrhoeic keratosis has a stuck-on appearance, milia-like cysts and comedo-like openings.",
    "Actinic keratosis, squamous cell carcinoma, dermatofibroma and vascular lesions are other classes.",
    "Options: A. nevus B. melanoma C. keratosis D. carcinoma. Answer with the letter.",
    "Describe the colour, shape, border and texture of the lesion in the dermoscopic image.",
    "Yes. No. Benign. Malignant. The answer is A. The answer is B. I am not sure.",
    "Where is the lesion located: face, trunk, arm, leg, hand, foot, scalp or back?",
    "The patient is 54 years old; the lesion changed in size over 3 months.",
)


def train_tokenizer(vocab_size: int, special_tokens: Sequence[str]) -> Tokenizer:
    """A byte-level BPE tokenizer trained on a small medical corpus; `special_tokens` come first."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    return tokenizer
