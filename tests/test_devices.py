"""Device enumeration (vkinfer.gpu.vulkan_info) and `vkinfer devices`.

Every reported field is compared with `vulkaninfo` (when installed), the ctypes struct layouts
with vulkan_core.h (when a C compiler and the header are installed), and device 0 with kp's."""
import ctypes
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from vkinfer.errors import VkInferError
from vkinfer.gpu import vulkan_info
from vkinfer.gpu.vulkan_info import query_devices

SUBGROUP_BITS = {"BASIC": 0x1, "VOTE": 0x2, "ARITHMETIC": 0x4, "BALLOT": 0x8, "SHUFFLE": 0x10,
                 "SHUFFLE_RELATIVE": 0x20, "CLUSTERED": 0x40, "QUAD": 0x80}


def vkinfer_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vkinfer.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


def test_finds_lavapipe_with_plausible_limits():
    devices = query_devices()
    assert [d.index for d in devices] == list(range(len(devices)))
    lavapipe = [d for d in devices if "llvmpipe" in d.name]
    assert lavapipe, f"no llvmpipe among {[d.name for d in devices]}"
    d = lavapipe[0]
    assert d.device_type == "cpu"
    assert d.driver_name == "llvmpipe"
    assert tuple(int(n) for n in d.api_version.split(".")) >= (1, 1, 0)
    assert d.max_storage_buffer_range >= 1 << 27
    assert all(n >= 65535 for n in d.max_compute_work_group_count)
    assert d.max_compute_work_group_invocations >= 128
    assert d.max_push_constants_size >= 128
    assert d.max_per_stage_storage_buffers >= 4
    assert d.subgroup_size in (4, 8, 16, 32, 64)
    assert d.device_local_bytes >= 1 << 28
    assert d.shader_int64


def test_lane_kernels_need_int64(monkeypatch):
    """The CPU-device kernels load 64-bit words: they run on lavapipe with vkinfer's kp, and a
    CPU device without shaderInt64 gets the GPU kernels."""
    from vkinfer.gpu import Device
    from vkinfer.gpu import device as device_module
    lavapipe = next(d.index for d in query_devices() if d.device_type == "cpu")
    dev = Device(lavapipe)
    assert dev.int64 and dev.lane_kernels
    dev.close()
    infos = [dataclasses.replace(d, shader_int64=False) for d in query_devices()]
    monkeypatch.setattr(device_module, "query_devices", lambda: infos)
    dev = Device(lavapipe)
    assert not dev.int64 and not dev.lane_kernels
    dev.close()


def test_query_is_cached_and_needs_no_kp():
    assert query_devices()[0] is query_devices()[0]
    code = ("import sys; from vkinfer.gpu.vulkan_info import query_devices; "
            "query_devices(); print('kp' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_order_matches_kp(dev):
    assert dev.mgr.get_device_properties()["device_name"] == query_devices()[dev.index].name
    assert dev.info == query_devices()[dev.index]


def parse_vulkaninfo(text: str) -> list[dict]:
    """Per GPU section: the first `key = value` of each key, `key: count = N` lists, and the
    memory heaps."""
    gpus = []
    for section in re.split(r"^GPU\d+:\n", text, flags=re.M)[1:]:
        values, lists, heaps = {}, {}, []
        lines = section.splitlines()
        for i, line in enumerate(lines):
            if m := re.match(r"^\t(\w+)\s*= (.*)$", line):
                values.setdefault(m.group(1), m.group(2).strip())
            elif m := re.match(r"^\t(\w+): count = (\d+)$", line):
                items = lines[i + 1:i + 1 + int(m.group(2))]
                lists.setdefault(m.group(1), [s.strip() for s in items])
            elif re.match(r"^\tmemoryHeaps\[\d+\]:$", line):
                size = int(lines[i + 1].split("=")[1].split()[0])
                nflags = int(lines[i + 2].split("=")[1])
                flags = [s.strip() for s in lines[i + 3:i + 3 + nflags]]
                heaps.append((size, "MEMORY_HEAP_DEVICE_LOCAL_BIT" in flags))
        gpus.append({"values": values, "lists": lists, "heaps": heaps})
    return gpus


@pytest.mark.skipif(not shutil.which("vulkaninfo"), reason="vulkaninfo is not installed")
def test_every_field_matches_vulkaninfo():
    text = subprocess.run(["vulkaninfo"], capture_output=True, text=True, timeout=60).stdout
    gpus = parse_vulkaninfo(text)
    devices = query_devices()
    assert len(gpus) == len(devices)
    for d, gpu in zip(devices, gpus):
        v, lists = gpu["values"], gpu["lists"]
        number = lambda key: int(v[key].split()[0], 0)
        assert d.name == v["deviceName"]
        assert d.device_type == v["deviceType"].removeprefix("PHYSICAL_DEVICE_TYPE_").lower()
        assert d.api_version == v["apiVersion"].split()[0]
        assert d.vendor_id == number("vendorID")
        assert d.max_storage_buffer_range == number("maxStorageBufferRange")
        assert d.max_push_constants_size == number("maxPushConstantsSize")
        assert d.max_per_stage_storage_buffers == number("maxPerStageDescriptorStorageBuffers")
        assert d.max_compute_shared_memory_size == number("maxComputeSharedMemorySize")
        assert d.max_compute_work_group_invocations == number("maxComputeWorkGroupInvocations")
        numbers = lambda key: tuple(int(n) for n in lists[key])
        assert d.max_compute_work_group_count == numbers("maxComputeWorkGroupCount")
        assert d.max_compute_work_group_size == numbers("maxComputeWorkGroupSize")
        assert d.heaps == gpu["heaps"]
        assert d.subgroup_size == number("subgroupSize")
        assert d.max_memory_allocation_size == number("maxMemoryAllocationSize")
        assert d.shader_int64 == (v["shaderInt64"] == "true")
        if "SHADER_STAGE_COMPUTE_BIT" in lists["supportedStages"]:
            ops = sum(SUBGROUP_BITS[s.removeprefix("SUBGROUP_FEATURE_").removesuffix("_BIT")]
                      for s in lists["supportedOperations"])
            assert d.subgroup_operations == ops
        if "driverName" in v:
            assert d.driver_name == v["driverName"]
            assert v["driverInfo"] in d.driver


LAYOUT_STRUCTS = ["VkApplicationInfo", "VkInstanceCreateInfo", "VkPhysicalDeviceLimits",
                  "VkPhysicalDeviceSparseProperties", "VkPhysicalDeviceProperties",
                  "VkPhysicalDeviceProperties2", "VkPhysicalDeviceSubgroupProperties",
                  "VkPhysicalDeviceMaintenance3Properties", "VkPhysicalDeviceDriverProperties",
                  "VkMemoryType", "VkMemoryHeap", "VkPhysicalDeviceMemoryProperties",
                  "VkExtensionProperties", "VkPhysicalDeviceFeatures"]


VULKAN_HEADER = "/usr/include/vulkan/vulkan_core.h"


@pytest.mark.skipif(not (shutil.which("cc") and os.path.exists(VULKAN_HEADER)),
                    reason="needs a C compiler and the Vulkan headers (libvulkan-dev)")
def test_struct_layouts_match_vulkan_core_h(tmp_path):
    expected, prints = [], []
    for name in LAYOUT_STRUCTS:
        struct = getattr(vulkan_info, name)
        expected.append(f"{name} size {ctypes.sizeof(struct)}")
        prints.append(f'printf("{name} size %zu\\n", sizeof({name}));')
        for field, _ in struct._fields_:
            expected.append(f"{name}.{field} {getattr(struct, field).offset}")
            prints.append(f'printf("{name}.{field} %zu\\n", offsetof({name}, {field}));')
    src = tmp_path / "layout.c"
    body = textwrap.indent("\n".join(prints), "    ")
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <vulkan/vulkan_core.h>\n"
                   f"int main(void) {{\n{body}\n    return 0;\n}}\n")
    subprocess.run(["cc", str(src), "-o", str(tmp_path / "layout")], check=True, timeout=120)
    got = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True,
                         check=True).stdout
    assert got.splitlines() == expected


def test_missing_loader_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(vulkan_info, "LOADER_NAMES", ("libvulkan-does-not-exist.so.1",))
    vulkan_info._query_once.cache_clear()
    try:
        with pytest.raises(VkInferError, match="libvulkan1 mesa-vulkan-drivers"):
            query_devices()
    finally:
        vulkan_info._query_once.cache_clear()


def test_cli_devices_lists_the_limits():
    res = vkinfer_cli("devices")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    d = query_devices()[0]
    assert f"0: {d.name}" in out
    rows = [("type", d.device_type), ("driver", d.driver), ("Vulkan API", d.api_version),
            ("maxStorageBufferRange", str(d.max_storage_buffer_range)),
            ("maxComputeWorkGroupCount", " x ".join(map(str, d.max_compute_work_group_count))),
            ("maxComputeWorkGroupInvocations", str(d.max_compute_work_group_invocations)),
            ("subgroup size", str(d.subgroup_size))]
    for label, value in rows:
        assert re.search(rf"^\s+{label}:\s+{re.escape(value)}", out, re.M), (label, out)
    assert re.search(r"device-local heaps:\s+\d+\.\d\d [GMK]iB", out)
    assert re.search(r"kp barrier fix: (yes|no)", out)


def test_cli_devices_json_holds_the_same_facts():
    res = vkinfer_cli("devices", "--json")
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout)
    devices = query_devices()
    assert facts["selected"] == 0 and len(facts["devices"]) == len(devices)
    for got, d in zip(facts["devices"], devices):
        assert got.pop("selected") is (d.index == 0)
        assert got.pop("device_local_heaps") == [size for size, local in d.heaps if local]
        assert got.pop("subgroup_size") == (d.subgroup_size or None)
        assert tuple(got.pop("max_compute_work_group_count")) == d.max_compute_work_group_count
        assert set(got) == {"index", "name", "device_type", "driver", "api_version",
                            "max_storage_buffer_range", "max_compute_work_group_invocations"}
        assert got == {key: getattr(d, key) for key in got}     # the rest by DeviceInfo's names
    text = vkinfer_cli("devices").stdout
    assert f"kp barrier fix: {facts['kp_barrier_fix_note']}" in text
    assert facts["kp_barrier_fix"] is (facts["kp_barrier_fix_note"] == "yes")


def test_cli_devices_json_without_kp(monkeypatch, capsys):
    """kp not importable: the JSON says null and why, the listing still comes."""
    from vkinfer import cli
    monkeypatch.setitem(sys.modules, "kp", None)
    assert cli.main(["devices", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["kp_barrier_fix"] is None
    assert facts["kp_barrier_fix_note"].startswith("kp is not importable")
    assert facts["devices"]


@pytest.mark.parametrize("args, env", [(["--device", "99", "devices"], {}),
                                       (["devices", "--device", "99"], {}),
                                       (["devices", "--json", "--device", "99"], {}),
                                       (["devices"], {"VKINFER_DEVICE": "99"})])
def test_cli_bad_device_is_one_line(args, env):
    res = vkinfer_cli(*args, env=env)
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.splitlines() == ["vkinfer: error: device 99 does not exist; "
                                       f"`vkinfer devices` lists {len(query_devices())} device(s)"]


def test_cli_no_driver_is_one_line():
    res = vkinfer_cli("devices", env={"VK_ICD_FILENAMES": "/nonexistent/icd.json",
                                      "VK_DRIVER_FILES": "/nonexistent/icd.json"})
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vkinfer: error: ")
    assert "mesa-vulkan-drivers" in lines[0]


def test_cli_keyboard_interrupt_exits_130(monkeypatch):
    from vkinfer import cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_devices", interrupted)
    assert cli.main(["devices"]) == 130
