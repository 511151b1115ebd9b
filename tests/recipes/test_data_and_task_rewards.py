"""rlhf.data (dataset loading from local copies and Hub ids, with errors naming the field; prompts) and
rlhf.task_rewards (the shipped tasks' reward functions)."""

import re
import time
from decimal import Decimal

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf.data import drop_long_prompts, gsm8k_prompts, imdb_prompts, load_dataset_checked
from rlhf.task_rewards import ClassifierLabelReward, gsm8k_exact_answer, parse_number


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7", Decimal(7)),
        ("so the answer is 1,234.50 dollars", Decimal("1234.50")),
        ("I think 12, no wait: 18", Decimal(18)),
        ("#### $42 (then 7 more words 9)", Decimal(42)),
        ("the total is -3", Decimal(-3)),
        ("no number here", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_gsm8k_exact_answer_by_hand():
    answers = ["3 + 4 = 7\n#### 7", "#### 1,200", "#### 18", "#### 5"]
    completions = ["3 plus 4 is 7.\n#### 7.0", "Each gets 1200", "I get 17 or maybe 19", "no idea"]
    assert gsm8k_exact_answer([""] * 4, completions, answer=answers) == [1.0, 1.0, 0.0, 0.0]


def test_local_sources_load_through_the_same_function(assets):
    rows = load_dataset_checked(assets["gsm8k"])  # jsonl: one file = one split
    assert rows.column_names == ["question", "answer"] and len(rows) == 8
    train = load_dataset_checked(
        assets["imdb_disk"], split="train", max_samples=5
    )  # save_to_disk DatasetDict
    assert len(train) == 5 and set(train.column_names) == {"text", "label"}
    assert len(load_dataset_checked(assets["imdb_disk"], split="test")) == 4


def test_missing_local_path_names_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset_name='\./no/such/data\.jsonl': no such local"):
        load_dataset_checked("./no/such/data.jsonl")
    with pytest.raises(FileNotFoundError, match="dataset_name=.*no such local"):
        load_dataset_checked(str(tmp_path / "missing_dir"))


@pytest.mark.parametrize(
    ("name", "content"), [("data.jsonl", ""), ("data.jsonl", "\n  \n"), ("data.csv", "")]
)
def test_empty_data_file_says_so(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    builder = {"data.jsonl": "json", "data.csv": "csv"}[name]
    message = f"^prompts_file='{re.escape(str(path))}': the file is empty; expected a {builder} file with at least one row$"
    with pytest.raises(ValueError, match=message):
        load_dataset_checked(str(path), field="prompts_file")


def test_unknown_split_lists_the_splits(assets):
    with pytest.raises(ValueError, match=r"no split 'validation'.*\['test', 'train'\]"):
        load_dataset_checked(assets["imdb_disk"], split="validation")


def test_unreachable_hub_id_fails_fast_with_the_field_and_a_remedy():
    start = time.perf_counter()
    with pytest.raises(
        OSError, match=r"dataset_name='stanfordnlp/imdb' could not be loaded: .*offline.*save_to_disk"
    ):
        load_dataset_checked("stanfordnlp/imdb")
    assert time.perf_counter() - start < 20


def test_prompts(assets):
    imdb = imdb_prompts(load_dataset_checked(assets["imdb"]), prompt_words=4)
    assert imdb.column_names == ["prompt"]
    assert imdb[1]["prompt"] == "This film was a"
    assert all(len(p.split()) == 4 and "<br" not in p for p in imdb["prompt"])
    gsm = gsm8k_prompts(load_dataset_checked(assets["gsm8k"]))
    assert gsm[0]["prompt"][0]["role"] == "user" and gsm[0]["prompt"][0]["content"].startswith(
        "Tom has 3 apples"
    )
    assert gsm[0]["answer"].endswith("#### 7")
    with pytest.raises(
        ValueError, match=r"no column\(s\) \['question', 'answer'\]; its columns are \['text', 'label'\]"
    ):
        gsm8k_prompts(load_dataset_checked(assets["imdb"]))


def test_drop_long_prompts_uses_the_chat_template(assets):
    tokenizer = AutoTokenizer.from_pretrained(assets["lm"])
    gsm = gsm8k_prompts(load_dataset_checked(assets["gsm8k"]))
    lengths = [
        len(tokenizer.apply_chat_template(p, add_generation_prompt=True)["input_ids"]) for p in gsm["prompt"]
    ]
    cut = sorted(lengths)[4]
    kept, dropped = drop_long_prompts(gsm, tokenizer, cut)
    assert dropped == sum(n > cut for n in lengths) and len(kept) == 8 - dropped


def test_classifier_label_reward_is_the_positive_logit(assets):
    reward = ClassifierLabelReward(assets["sentiment"], "positive")
    assert reward.label_id == 1 and reward.__name__ == "tiny_sentiment:POSITIVE"
    prompts, completions = ["I loved this", "a dull and"], [" movie so much", " boring film"]
    scores = reward(prompts, completions)
    model = AutoModelForSequenceClassification.from_pretrained(assets["sentiment"]).eval()
    tok = AutoTokenizer.from_pretrained(assets["sentiment"])
    for p, c, s in zip(prompts, completions, scores):
        with torch.no_grad():
            logits = model(**tok(p + c, return_tensors="pt")).logits  # (1, 2), unpadded
        assert s == pytest.approx(logits[0, 1].item(), abs=1e-5)


def test_classifier_label_reward_errors(assets, tmp_path):
    with pytest.raises(ValueError, match=r"reward_label='JOY'.*labels \['NEGATIVE', 'POSITIVE'\]"):
        ClassifierLabelReward(assets["sentiment"], "JOY")
    with pytest.raises(FileNotFoundError, match="reward_model_name_or_path=.*no such local path"):
        ClassifierLabelReward(str(tmp_path / "nope"), "POSITIVE")
    with pytest.raises(
        OSError, match="reward_model_name_or_path='lvwerra/distilbert-imdb' could not be loaded"
    ):
        ClassifierLabelReward("lvwerra/distilbert-imdb", "POSITIVE")
