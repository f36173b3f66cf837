"""`atjax.bench aot`: the compiled step's summary on a hand-written module (counts and
traffic checked by hand), the GPU target descriptions, and the command end to end on the
attached CPU devices at a tiny size (a GPU target needs JAX's CUDA plugin, which the test
environment does not install)."""

import json
import pathlib

import numpy as np
import pytest

from atjax.bench import aot

TINY = f"{pathlib.Path(__file__).resolve().parents[1]}/configs/synthetic.py:size=tiny"

# A GPU-style entry computation: a forward fusion, a cuDNN convolution with its workspace,
# an optimizer fusion whose hero is a transpose (a multi-output Adam kernel), the copy of
# one of its outputs into the donated buffer, and buffer-naming instructions that launch
# nothing. A second computation (the fusion's body) must not be counted.
MODULE = """HloModule jit_train_step

%fused_transpose (p0: f32[8,4], p1: f32[4,8]) -> (f32[4,8], f32[4,8]) {
  %p0 = f32[8,4]{1,0} parameter(0)
  %t = f32[4,8]{1,0} transpose(%p0), dimensions={1,0}
  %p1 = f32[4,8]{1,0} parameter(1)
  %s = f32[4,8]{1,0} subtract(%p1, %t)
  ROOT %r = (f32[4,8]{1,0}, f32[4,8]{1,0}) tuple(%s, %t)
}

%fused_relu (q0: bf16[2,8,10,10]) -> bf16[2,8,10,10] {
  %q0 = bf16[2,8,10,10]{3,2,1,0} parameter(0)
  %z = bf16[2,8,10,10]{3,2,1,0} constant(0)
  ROOT %m = bf16[2,8,10,10]{3,2,1,0} maximum(%q0, %z), metadata={op_name="jit(train_step)/jvp(audio_encoder)/stage1/max"}
}

ENTRY %main.9 (x.1: bf16[2,8,10,10], w.1: bf16[16,3,3,8], g.1: f32[8,4], p.1: f32[4,8]) -> (f32[4,8], bf16[2,16,10,10]) {
  %x.1 = bf16[2,8,10,10]{3,2,1,0} parameter(0)
  %w.1 = bf16[16,3,3,8]{3,2,1,0} parameter(1)
  %g.1 = f32[8,4]{1,0} parameter(2)
  %p.1 = f32[4,8]{1,0} parameter(3)
  %loop_maximum_fusion = bf16[2,8,10,10]{3,2,1,0} fusion(%x.1), kind=kLoop, calls=%fused_relu
  %cudnn-conv.1 = (bf16[2,16,10,10]{3,2,1,0}, u8[4096]{0}) custom-call(%loop_maximum_fusion, %w.1), window={size=3x3 pad=1_1x1_1}, dim_labels=bf01_o01i->bf01, custom_call_target="__cudnn$convForward", metadata={op_name="jit(train_step)/transpose(jvp(audio_encoder))/stage1/conv_general_dilated"}
  %get-tuple-element.1 = bf16[2,16,10,10]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
  %input_transpose_fusion = (f32[4,8]{1,0}, f32[4,8]{1,0}) fusion(%g.1, %p.1), kind=kInput, calls=%fused_transpose, metadata={op_name="jit(train_step)/optimizer/mul"}
  %get-tuple-element.2 = f32[4,8]{1,0} get-tuple-element(%input_transpose_fusion), index=0
  %copy.1 = f32[4,8]{1,0} copy(%get-tuple-element.2)
  %bitcast.1 = f32[32]{0} bitcast(%copy.1)
  ROOT %tuple.1 = (f32[4,8]{1,0}, bf16[2,16,10,10]{3,2,1,0}) tuple(%copy.1, %get-tuple-element.1)
}
"""


def test_summary_of_a_hand_written_module():
    s = aot.module_summary(MODULE)
    image, conv_out = 2 * 8 * 10 * 10 * 2, 2 * 16 * 10 * 10 * 2
    relu = image + image
    conv = image + 16 * 3 * 3 * 8 * 2 + conv_out  # the u8 workspace left out
    adam = 8 * 4 * 4 + 4 * 8 * 4 + 2 * (4 * 8 * 4)
    copy = 2 * (4 * 8 * 4)
    assert s["kernels"] == 4  # relu, conv, transpose fusion, copy; not the bitcast
    assert s["kernels_by_category"] == {"elementwise": 2, "convolution": 1, "layout copy": 1}
    assert s["traffic_gb"] == pytest.approx((relu + conv + adam + copy) / 1e9, abs=1e-6)
    assert s["copies"] == 1 and s["copies_gb"] == pytest.approx(copy / 1e9, abs=1e-6)
    assert s["transposes"] == 1 and s["transposes_gb"] == pytest.approx(adam / 1e9, abs=1e-6)
    parts = s["traffic_gb_by_part"]
    assert parts["audio_encoder/stage1"]["forward"] == pytest.approx(relu / 1e9, abs=1e-6)
    assert parts["audio_encoder/stage1"]["backward"] == pytest.approx(conv / 1e9, abs=1e-6)
    assert parts["optimizer"]["forward"] == pytest.approx(adam / 1e9, abs=1e-6)
    assert parts["other"]["forward"] == pytest.approx(copy / 1e9, abs=1e-6)  # a copy has no scope
    assert s["kernels_by_part"] == {"audio_encoder/stage1": {"forward": 1, "backward": 1},
                                    "optimizer": {"forward": 1, "backward": 0},
                                    "other": {"forward": 1, "backward": 0}}
    table = aot.format_result({"target": "h200", "head": "mlp", "dtype": "bfloat16",
                               "overrides": [], **s})
    assert [line.split()[-3:] for line in table.splitlines()[-3:]] == [
        ["1", "+", "1"], ["1", "+", "0"], ["1", "+", "0"]]


def test_a_module_without_entry_is_refused():
    with pytest.raises(ValueError, match="ENTRY"):
        aot.module_summary(MODULE.replace("ENTRY ", ""))


@pytest.mark.parametrize("name,bandwidth", [("h100", 3_352_320_000_000),
                                            ("h200", 4_800_000_000_000)])
def test_target_descriptions(name, bandwidth):
    text = aot.target_config(name)
    assert f"memory_bandwidth: {bandwidth}" in text
    assert "core_count: 132" in text and "cuda_compute_capability { major: 9 minor: 0 }" in text
    assert 'platform_name: "CUDA"' in text
    # Balanced braces: the protobuf text parser rejects anything else.
    assert text.count("{") == text.count("}") == 4
    with pytest.raises(ValueError, match="unknown target"):
        aot.target_config("a100")


@pytest.mark.slow
def test_command_compiles_the_step_for_the_attached_devices(tmp_path, capsys):
    out = tmp_path / "aot.jsonl"
    assert aot.main(["--target", "local", "--config", TINY, "--heads", "mlp,transformer",
                     "--dtypes", "float32", "--batch_size", "8", "--text_length", "8",
                     "--config.model.kernel_overrides.weight_copies=True", "--out", str(out),
                     "--hlo", str(tmp_path / "hlo")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["head"] for r in lines] == ["mlp", "transformer"]
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    for r in lines:
        assert r["bench"] == "aot" and r["target"] == "local" and r["dtype"] == "float32"
        assert r["overrides"] == ["model.kernel_overrides.weight_copies=True"]
        assert r["kernels"] == sum(r["kernels_by_category"].values()) > 0
        assert r["traffic_gb"] == pytest.approx(
            sum(r["traffic_gb_by_category"].values()), abs=1e-2)
        parts = r["traffic_gb_by_part"]
        for part in ("optimizer", "loss", "text_encoder/layers", "audio_encoder/stage1"):
            assert sum(parts[part].values()) > 0, part
        assert parts["audio_encoder/stage1"]["backward"] > 0
        assert r["argument_gib"] > 0
    assert len(list((tmp_path / "hlo").glob("*.hlo.txt.gz"))) == 2


def test_a_setting_that_fails_is_reported_and_the_rest_run(capsys):
    assert aot.main(["--target", "local", "--config", TINY, "--heads", "mlp",
                     "--dtypes", "float16,float32", "--batch_size", "8",
                     "--text_length", "8"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["dtype"] for r in lines] == ["float16", "float32"]
    assert "error" in lines[0] and "kernels" not in lines[0]
    assert "error" not in lines[1] and lines[1]["kernels"] > 0


_PTX = """
.visible .entry loop_select_fusion_2(
\t.param .u64 p0
)
{
\t.reg .b32 \t%r<6>;
\t// a comment; with a semicolon
\txor.b32 \t%r1, %r2, %r3;
\txor.b32 \t%r4, %r1, %r3;
$L__BB0_2:
\t@%p1 bra \t$L__BB0_2;
\tshf.l.wrap.b32 \t%r5, %r4, %r4, 13;
\tst.global.v4.b16 \t[%rd1], {%rs1, %rs2, %rs3, %rs4};
\tret;
}

.visible .entry other_fusion(
\t.param .u64 p0
)
{
\txor.b32 \t%r1, %r2, %r3;
\tst.global.b32 \t[%rd1], %r1;
\tst.global.v2.f32 \t[%rd2], {%f1, %f2};
\tret;
}
"""


def test_ptx_reader_finds_the_output_kernel_and_counts_per_element():
    from atjax.bench import dropout_kernel, ptx

    hlo = ("HloModule jit_dropout16\n\nfused_select {\n  ROOT %x = f32[2] parameter(0)\n}\n\n"
           "ENTRY %main (p: bf16[8]) -> bf16[8] {\n  %p = bf16[8] parameter(0)\n"
           "  ROOT %loop_select_fusion.2 = bf16[8] fusion(%p), kind=kLoop\n}\n")
    assert ptx.root_kernel(hlo) == "loop_select_fusion_2"
    # Four bfloat16 elements in one 4-vector store, two xors: half an xor per element. Six
    # instructions (a guarded branch among them); not the directive, comment or label.
    assert ptx.kernel_stats(_PTX, "loop_select_fusion_2", 16) == {
        "instructions_per_thread": 6, "xor_per_thread": 2, "local_per_thread": 0,
        "mma_per_thread": 0, "elements_per_thread": 4, "instructions_per_element": 1.5,
        "xor_per_element": 0.5}
    # One 32-bit store and one 2-vector of float32: three elements.
    assert ptx.kernel_stats(_PTX, "other_fusion", 32) == {
        "instructions_per_thread": 4, "xor_per_thread": 1, "local_per_thread": 0,
        "mma_per_thread": 0, "elements_per_thread": 3, "instructions_per_element": 1.33,
        "xor_per_element": 0.33}
    # A Triton kernel: tensor-core instructions, and a spill to local memory and back.
    triton = (".visible .entry attention_forward(\n\t.param .u64 p0\n)\n{\n"
              "\tmma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%r1}, {%r2}, {%r3}, {%r1};\n"
              "\t@%p1 st.local.b32 \t[%rd9], %r1;\n\tld.local.b32 \t%r4, [%rd9];\n"
              "\twgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%r5}, %rd1, %rd2;\n"
              "\tst.global.b16 \t[%rd1], %rs1;\n\tret;\n}\n")
    stats = ptx.kernel_stats(triton, "attention_forward", 16)
    assert (stats["local_per_thread"], stats["mma_per_thread"]) == (2, 2)
    assert list(ptx.entries(_PTX)) == ["loop_select_fusion_2", "other_fusion"]
    with pytest.raises(ValueError, match="no PTX entry 'missing'.*other_fusion"):
        ptx.kernel_stats(_PTX, "missing", 16)
    with pytest.raises(SystemExit):
        dropout_kernel.main(["--shape", "64,x"])


def test_ptx_dump_flags_and_every_ptx_file_of_a_module(tmp_path):
    # jax 0.11's XLA (the GPU image's) writes PTX only for the kernel emitters that
    # --xla_dump_emitter_re matches, in several numbered files per module; jax 0.10's
    # wrote one file per module with --xla_dump_to alone. Flags checked in a fresh process:
    # set here, they would make XLA dump every later compile of this test worker.
    import os
    import subprocess
    import sys

    from atjax.bench import ptx

    code = ("import os; from atjax.bench import ptx; d = ptx.start_dump('atjax-test-'); "
            "print(d); print(os.environ['XLA_FLAGS']); d.rmdir()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
                         check=True).stdout.splitlines()
    assert out[1] == (f"--xla_force_host_platform_device_count=2 --xla_dump_to={out[0]} "
                      "--xla_dump_emitter_re=.*")
    first, second = _PTX.split(".visible .entry other_fusion")
    (tmp_path / "module_0001.jit_two_files.1.ptx").write_text(first)
    (tmp_path / "module_0001.jit_two_files.3.ptx").write_text(
        ".version 8.0\n.visible .entry other_fusion" + second)
    (tmp_path / "module_0002.jit_another.1.ptx").write_text(first.replace("select", "xyz"))
    _, code = ptx.compile_with_ptx(lambda x: x + 1, (np.zeros(2, np.float32),), "two_files",
                                   tmp_path)
    assert list(ptx.entries(code)) == ["loop_select_fusion_2", "other_fusion"]
    with pytest.raises(RuntimeError, match="no PTX for absent"):
        ptx.compile_with_ptx(lambda x: x + 1, (np.zeros(2, np.float32),), "absent", tmp_path)


@pytest.mark.parametrize("args,message", [
    (["--layer", "taps", "--shape", "64,1001"], "--shape takes 3 sizes for taps"),
    (["--layer", "gelu", "--shape", "64,x,64"], "--shape takes comma-separated sizes"),
    (["--layer", "taps", "--shape", "1,2,3,4"], "--shape takes 3 sizes for taps"),
    (["--layer", "attention", "--shape", "64,32,16"], "--shape takes 4 sizes for attention"),
    (["--layer", "softmax"], "invalid choice: 'softmax'"),
    ([], "the following arguments are required: --layer")])
def test_layer_kernel_refuses_bad_arguments(args, message, capsys):
    from atjax.bench import layer_kernel

    with pytest.raises(SystemExit):
        layer_kernel.main(args)
    assert message in capsys.readouterr().err


def test_ptxas_report_gives_registers_and_spills_per_kernel(tmp_path, monkeypatch):
    # PTX has virtual registers: spills show only in ptxas's report. A stand-in ptxas
    # checks the arguments it gets (one module per run, the module's own target) and
    # reports as the real one does.
    from atjax.bench import ptx

    fake = tmp_path / "ptxas"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        "[ \"$1\" = -v ] || exit 3\n"
        "arch=${2#-arch=}; name=$(grep -o '\\.entry [a-z_]*' \"$3\" | cut -d' ' -f2)\n"
        "[ \"$(grep -c '\\.entry' \"$3\")\" = 1 ] || exit 4\n"
        "echo \"ptxas info    : Compiling entry function '$name' for '$arch'\" >&2\n"
        "echo \"ptxas info    : Function properties for $name\" >&2\n"
        "if [ $name = spilly ]; then s=24; else s=0; fi\n"
        "echo \"    8 bytes stack frame, $s bytes spill stores, $s bytes spill loads\" >&2\n"
        "echo \"ptxas info    : Used $((${#name} * 8)) registers, used 1 barriers\" >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PTXAS", str(fake))
    assert ptx.find_ptxas() == str(fake)
    module = "//\n// Generated by LLVM NVPTX Back-End\n//\n\n.version 8.8\n.target {}\n" \
             ".visible .entry {}(\n)\n{{\n\tret;\n}}\n"
    info = ptx.assemble(module.format("sm_90a", "attention_forward") + "\n"
                        + module.format("sm_90a", "spilly"), str(fake))
    assert info == {
        "attention_forward": {"stack_bytes": 8, "spill_store_bytes": 0,
                              "spill_load_bytes": 0, "registers": 136},
        "spilly": {"stack_bytes": 8, "spill_store_bytes": 24, "spill_load_bytes": 24,
                   "registers": 48}}
    fake.write_text("#!/usr/bin/env bash\necho 'fatal: Unsupported .version 8.8' >&2\nexit 1\n")
    with pytest.raises(RuntimeError, match="ptxas failed: fatal: Unsupported"):
        ptx.assemble(module.format("sm_90a", "k"), str(fake))
