"""The LoRA verifier head (scorers.adapted, train.lora): its layers compute what the model
computes, training separates a learnable set, and a saved head scores the same after
loading, without touching the policy's weights."""

from __future__ import annotations

import random

import pytest
import torch

from ponder.scorers.adapted import AdaptedTop, check_layout
from ponder.scorers.backbone import Backbone, model_hash
from ponder.scorers.base import ScoreItem
from ponder.scorers.registry import make_scorer
from ponder.scorers.trained import Card, TrainedVerifier, save_verifier
from ponder.train.lora import Item, train_lora


def tiny_llama(vocab: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def test_at_initialisation_the_adapted_layers_compute_the_models_own_last_state(engine):
    ids = engine.tokenizer("What is 2 + 3? The answer is 5.")["input_ids"]
    with torch.no_grad():
        out = engine.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    adapted = AdaptedTop(engine.model, top=3, rank=4)
    lower = adapted.lower_states(ids)
    # The split forward (no mask: causal by construction) matches the model's masked one.
    assert torch.allclose(lower, out.hidden_states[adapted.split][0], atol=1e-4)
    with torch.no_grad():  # B starts at zero: the adapted layers are the model's layers
        x = adapted.upper[0](lower[None], position_ids=torch.arange(len(ids))[None],
                             position_embeddings=engine.model.model.rotary_emb(
                                 lower[None], torch.arange(len(ids))[None]))
        x = x[0] if isinstance(x, tuple) else x
    assert torch.allclose(x[0], out.hidden_states[adapted.split + 1][0], atol=1e-4)


def learnable(n: int, seed: int) -> list[Item]:
    """Label 1 when the token read is 7 (its state is what the head sees)."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        ids = [rng.randrange(10, 64) for _ in range(rng.randrange(6, 12))]
        if i % 2:
            ids[-1] = 7
        items.append(Item(ids, [len(ids) - 1], [float(i % 2)]))
    return items


def test_training_lowers_the_loss_and_separates_a_learnable_set():
    adapted = AdaptedTop(tiny_llama(), top=2, rank=4)
    fit = train_lora(adapted, learnable(64, 0), learnable(32, 1), epochs=12, lr=3e-3,
                     patience=12)
    assert fit.train_loss[-1] < 0.5 * fit.train_loss[0]
    assert fit.val_auroc > 0.9
    assert adapted.temperature > 0


def test_a_split_with_one_class_is_refused_with_what_to_do():
    items = [Item([10, 11, 12], [2], [0.0])] * 4
    with pytest.raises(ValueError, match="only incorrect samples"):
        train_lora(AdaptedTop(tiny_llama(), top=1, rank=2), items, learnable(4, 0))


def test_a_model_laid_out_otherwise_is_refused_with_what_to_do():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2))
    with pytest.raises(ValueError, match="--head probe"):
        check_layout(model)
    with pytest.raises(ValueError, match="1..3 top layers"):
        AdaptedTop(tiny_llama(), top=4, rank=2)


def test_a_saved_lora_verifier_scores_the_same_after_loading_and_leaves_the_policy_alone(
        engine, tmp_path):
    before = model_hash(engine.model)
    adapted = AdaptedTop(engine.model, top=2, rank=4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking head: nonzero updates everywhere
        for p in adapted.trainable():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    adapted.temperature, adapted.bias_shift = 1.5, 0.2
    backbone = Backbone(engine.model, engine.tokenizer, "smollm2-135m", reads="answer")
    card = Card("outcome", "smollm2-135m", backbone.hash, backbone.layers, head="lora",
                lora={"layers": 2, "rank": 4}, reads="answer")
    save_verifier(tmp_path / "v", card, adapted)
    question = [{"role": "user", "content": "What is 2 + 3?"}]
    items = [ScoreItem("What is 2 + 3?", question, "2 + 3 = 5. The answer is 5."),
             ScoreItem("What is 2 + 3?", question, "The answer is 7, or maybe 8 later.")]
    expected = []
    for item in items:
        encoded = backbone.encode(item.prompt, item.response)
        expected.append(float(adapted.probs(encoded.ids, [encoded.answer[1]])[0]))
    scorer = make_scorer(f"verifier:{tmp_path / 'v'}", engine)
    assert isinstance(scorer, TrainedVerifier)
    assert [r.score for r in scorer.score(items)] == pytest.approx(expected, abs=1e-5)
    assert len(set(expected)) == 2
    assert model_hash(engine.model) == before  # the engine still serves the policy as it was
