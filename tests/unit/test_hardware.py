from quantkit.hardware import Gpu, Hardware, parse_nvidia_smi


def test_parse_nvidia_smi_reads_each_gpu():
    text = "NVIDIA H100 80GB HBM3, 81559, 570.86.15\nNVIDIA H100 80GB HBM3, 81559, 570.86.15\n"
    gpus = parse_nvidia_smi(text)
    assert gpus == (Gpu("NVIDIA H100 80GB HBM3", 81559, "570.86.15"),) * 2


def test_parse_nvidia_smi_ignores_garbage():
    assert parse_nvidia_smi("No devices were found\n") == ()
    assert parse_nvidia_smi("") == ()


def test_describe_mentions_gpu_or_its_absence():
    cpu = Hardware("Some CPU", 2, 24.0, "x86_64")
    assert "no GPU" in cpu.describe() and not cpu.has_cuda
    gpu = Hardware("Some CPU", 16, 128.0, "x86_64", (Gpu("H100", 81920, "1"),))
    assert gpu.has_cuda and "H100 (80 GiB)" in gpu.describe()
