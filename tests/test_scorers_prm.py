"""Reward models loaded by style + path (tiny random checkpoints built here with a fixed seed
and saved to disk, so the real loading code runs), the judge, and the scorer registry."""

import json
import math

import pytest
import torch

from ponder.scorers.base import ScoreItem
from ponder.scorers.hf_prm import HFRewardModel, split_steps
from ponder.scorers.judge import JudgeScorer
from ponder.scorers.registry import make_scorer, scorer_names
from ponder.types import GenerateRequest, SamplingParams, ScoreRequest

QUESTION = "What is 2 + 3?"
ONE = "2 + 3 = 5, so the answer is \\boxed{5}."
THREE = "We add the numbers.\n\n2 + 3 = 5.\n\nThe answer is \\boxed{5}."


def _tokenizer(engine, folder, add=(), special=()):
    from transformers import AutoTokenizer

    engine.tokenizer.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    if special:
        tok.add_special_tokens({"additional_special_tokens": list(special)})
    if add:
        tok.add_tokens(list(add))
    return tok


def _tiny(config_cls, vocab, **extra):
    return config_cls(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      **extra)


def _save(model, tok, folder):
    """Save, and reload the tokenizer as the scorer will (transformers may pick another
    tokenizer class from the model's config, which splits "\n\n" differently)."""
    from transformers import AutoTokenizer

    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder), AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def qwen_prm(engine, tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForTokenClassification

    folder = tmp_path_factory.mktemp("qwen_prm")
    tok = _tokenizer(engine, folder, special=["<extra_0>"])
    torch.manual_seed(0)
    model = Qwen2ForTokenClassification(_tiny(Qwen2Config, len(tok), num_labels=2)).eval()
    path, tok = _save(model, tok, folder)
    return path, model, tok


@pytest.fixture(scope="module")
def shepherd(engine, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("shepherd")
    tok = _tokenizer(engine, folder, add=["ки"])
    torch.manual_seed(1)
    model = LlamaForCausalLM(_tiny(LlamaConfig, len(tok))).eval()
    path, tok = _save(model, tok, folder)
    return path, model, tok


def items(*responses):
    return [ScoreItem(QUESTION, [{"role": "user", "content": QUESTION}], r) for r in responses]


def test_split_steps_drops_empty_steps_and_takes_any_separator():
    assert split_steps(THREE) == ["We add the numbers.", "2 + 3 = 5.", "The answer is \\boxed{5}."]
    assert split_steps("a\n\n\n\n b \n\n") == ["a", "b"]
    assert split_steps("a\nb", "\n") == ["a", "b"]
    assert split_steps("   ") == []


def test_qwen_style_prm_gives_one_probability_per_step(qwen_prm):
    path, model, tok = qwen_prm
    prm = make_scorer(f"qwen-prm:{path}", device="cpu")
    one, three, empty = prm.score(items(ONE, THREE, ""))
    assert len(one.step_scores) == 1 and len(three.step_scores) == 3
    assert empty.step_scores == () and empty.usage.scorer_tokens == 0
    assert all(0 < p < 1 for p in three.step_scores)
    assert three.score == min(three.step_scores)  # default aggregation: min
    # By hand: the chat text with steps ended by <extra_0>; P(label 1) at each separator.
    messages = [{"role": "system", "content": prm.system_prompt},
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": "".join(f"{s}<extra_0>" for s in split_steps(THREE))}]
    ids = tok.encode(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
    sep = tok.convert_tokens_to_ids("<extra_0>")
    with torch.no_grad():
        probs = model(torch.tensor([ids])).logits[0].softmax(-1)[:, 1]
    expected = [probs[i].item() for i, t in enumerate(ids) if t == sep]
    assert three.step_scores == pytest.approx(expected, abs=1e-5)
    assert three.usage.scorer_tokens == len(ids)


def test_prm_scores_do_not_depend_on_the_batch_or_later_steps(qwen_prm):
    prm = HFRewardModel(qwen_prm[0], "qwen2.5-math-prm", device="cpu")
    together = prm.score(items(ONE, THREE, "We add the numbers."))
    alone = [prm.score(items(r))[0] for r in (ONE, THREE, "We add the numbers.")]
    for a, b in zip(together, alone, strict=True):
        assert a.step_scores == pytest.approx(b.step_scores, abs=1e-5)
    # A causal PRM: appending steps leaves the first step's score as it was.
    assert together[2].step_scores[0] == pytest.approx(together[1].step_scores[0], abs=1e-5)


def test_step_separator_is_configurable(qwen_prm):
    prm = HFRewardModel(qwen_prm[0], "qwen-prm", separator="\n", aggregation="last", device="cpu")
    [r] = prm.score(items("a\nb\nc\nd"))
    assert len(r.step_scores) == 4 and r.score == r.step_scores[-1]


def test_math_shepherd_style_reads_plus_minus_at_each_step_tag(shepherd):
    path, model, tok = shepherd
    prm = make_scorer(f"math-shepherd:{path}", device="cpu")
    one, three = prm.score(items(ONE, THREE))
    assert len(one.step_scores) == 1 and len(three.step_scores) == 3
    text = QUESTION + " " + " ки\n".join(split_steps(THREE)) + " ки"
    ids = tok.encode(text)
    tag = tok.convert_tokens_to_ids("ки")
    good, bad = tok.encode("+ -", add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    expected = [logits[i, [good, bad]].softmax(-1)[0].item() for i, t in enumerate(ids) if t == tag]
    assert len(expected) == 3
    assert three.step_scores == pytest.approx(expected, abs=1e-5)


def test_sequence_classification_orm_gives_one_score(engine, tmp_path):
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    tok = _tokenizer(engine, tmp_path)
    torch.manual_seed(2)
    model = Qwen2ForSequenceClassification(_tiny(Qwen2Config, len(tok), num_labels=1)).eval()
    path, tok = _save(model, tok, tmp_path)
    orm = make_scorer(f"orm:{path}", device="cpu")
    ratings = orm.score(items(ONE, THREE))
    assert all(r.step_scores is None for r in ratings)
    for r, response in zip(ratings, (ONE, THREE), strict=True):
        ids = tok.encode(tok.apply_chat_template(
            [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": response}],
            tokenize=False), add_special_tokens=False)
        with torch.no_grad():  # transformers' own pooling, one row at a time
            expected = model(torch.tensor([ids])).logits[0, 0].item()
        assert r.score == pytest.approx(expected, abs=1e-5)


def test_released_qwen_prm_layout_loads_without_running_its_code(engine, tmp_path, capfd,
                                                                 caplog):
    """Qwen2.5-Math-PRM ships code for an MLP head (score.0, ReLU, score.2) on a Qwen2 model;
    a checkpoint with that layout and an auto_map loads natively, and quietly (the head's
    tensors are not reported as unexpected keys of the base model)."""
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    tok = _tokenizer(engine, tmp_path, special=["<extra_0>"])
    torch.manual_seed(3)
    config = _tiny(Qwen2Config, len(tok))
    base = Qwen2Model(config).eval()
    head = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    tensors = {f"model.{k}": v.contiguous() for k, v in base.state_dict().items()}
    tensors |= {f"score.{k}": v.contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["Qwen2ForProcessRewardModel"]
    config.auto_map = {"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
    config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    capfd.readouterr()
    prm = make_scorer(f"qwen-prm:{tmp_path}", device="cpu")
    [r] = prm.score(items(THREE))
    loading = capfd.readouterr().err + caplog.text
    assert "UNEXPECTED" not in loading and "LOAD REPORT" not in loading, loading
    ids = prm._encode(items(THREE)[0])[0]
    sep = prm.tokenizer.convert_tokens_to_ids("<extra_0>")
    with torch.no_grad():
        probs = head(base(torch.tensor([ids])).last_hidden_state)[0].softmax(-1)[:, 1]
    assert r.step_scores == pytest.approx([probs[i].item() for i, t in enumerate(ids) if t == sep],
                                          abs=1e-5)
    assert len(r.step_scores) == 3


def test_checkpoints_with_their_own_code_need_consent(qwen_prm, tmp_path):
    import shutil

    folder = tmp_path / "remote"
    shutil.copytree(qwen_prm[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_prm.PRM"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        make_scorer(f"qwen-prm:{folder}").score(items(ONE))


def test_scorer_registry_names_and_errors():
    assert make_scorer("judge").name == "judge"
    assert make_scorer("judge:answer").target == "answer"
    assert make_scorer("prm:/some/folder").style == "qwen-prm"
    assert make_scorer("shepherd:/x").name == "math-shepherd:/x"
    assert "judge" in scorer_names() and "orm:PATH" in scorer_names()
    for bad in ("nonsense", "qwen-prm:", "judge:maybe", ""):
        with pytest.raises(ValueError):
            make_scorer(bad)
    with pytest.raises(ValueError, match="aggregation"):
        make_scorer("orm:/x", aggregation="max")
    with pytest.raises(ValueError, match="target"):
        JudgeScorer(None, target="steps")


# ---- the judge on the bundled model ---------------------------------------------------


def _exact_p_yes(engine, judge, ids):
    yes, no = judge._word_ids(True)
    y, n = engine.score([ScoreRequest(list(ids), [yes]), ScoreRequest(list(ids), [no])])
    return 1 / (1 + math.exp(n.logprobs[0] - y.logprobs[0]))


def test_judge_state_path_reads_exact_p_yes(engine, chat):
    judge = JudgeScorer(engine)
    prompt = chat("What is 12 + 35? Please put the answer in \\boxed{}.")
    [gen] = engine.generate([GenerateRequest(prompt, SamplingParams(
        n=3, max_tokens=16, seed=0, stop=("\n\n",)), keep_state=True)])
    its = [ScoreItem("What is 12 + 35?", prompt, c.text) for c in gen.completions]
    states = [c.state for c in gen.completions]
    fast = judge.score_last_step(its, states)
    # With only the top 2 read, rows whose Yes or No falls outside them take the exact path.
    narrow = JudgeScorer(engine, top_k=2).score_last_step(its, states)
    for c, f, other in zip(gen.completions, fast, narrow, strict=True):
        suffix = judge._suffix(True, "step")
        ids = c.state.token_ids + tuple(suffix[1:] if c.state.token_ids[-1] == suffix[0] else suffix)
        assert f.score == pytest.approx(_exact_p_yes(engine, judge, ids), abs=1e-4)
        assert 0 < f.score < 1 and f.step_scores == (f.score,)
        # Continuing the state costs the question's tokens, not the prompt and response again.
        assert 0 < f.usage.scorer_tokens <= len(suffix) + 1
        assert f.usage.forward_tokens == 0
        assert other.score == pytest.approx(f.score, abs=1e-4)
    # The text path asks the same question of the re-tokenized text: close, not identical.
    text = judge.score_last_step(its)
    assert [t.score for t in text] == pytest.approx([f.score for f in fast], abs=0.05)


def test_judge_scores_every_step_or_the_answer(engine, chat):
    prompt = chat(QUESTION)
    item = ScoreItem(QUESTION, prompt, THREE)
    [per_step] = JudgeScorer(engine, aggregation="mean").score([item])
    assert len(per_step.step_scores) == 3
    assert per_step.score == pytest.approx(sum(per_step.step_scores) / 3)
    [answer] = JudgeScorer(engine, target="answer").score([item])
    assert answer.step_scores is None and 0 < answer.score < 1
    # Raw-text prompts are judged too (" Yes" / " No" after "Answer:").
    [raw] = JudgeScorer(engine).score([ScoreItem(QUESTION, "Q: What is 2 + 3?\nA: ", ONE)])
    assert len(raw.step_scores) == 1 and raw.usage.scorer_tokens > 0


def test_beam_search_ranks_steps_by_a_prm(engine, qwen_prm):
    """A reward model plugs into search by name: each step's score is the PRM's score of its
    last step, and a path's value aggregates the scores of its steps."""
    from ponder.strategies.beam_search import BeamSearch
    from ponder.tasks.datasets import Problem

    prm = make_scorer(f"qwen-prm:{qwen_prm[0]}", device="cpu")
    config = BeamSearch(n=2, m=1, max_steps=2, step_max_tokens=16, seed=0, aggregation="min")
    [r] = config.run([Problem("p", QUESTION, "5")], engine, prm)
    nodes = {n["id"]: n for n in r.trace["nodes"]}
    for node in list(nodes.values())[1:]:
        path, at = [], node["id"]
        while at:
            path.append(nodes[at])
            at = nodes[at]["parent"]
        path.reverse()
        response = "".join(n["text"] + ("\n\n" if n["finish"] == "stop" else "")
                           for n in path[:-1]) + path[-1]["text"]
        [rating] = prm.score(items(response))
        assert node["score"] == pytest.approx(rating.step_scores[-1], abs=1e-6)
        assert node["value"] == pytest.approx(min(n["score"] for n in path))
    assert r.usage.scorer_tokens > 0 and r.usage.forward_tokens > 0
