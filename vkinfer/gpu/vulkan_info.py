"""Device properties kp does not report (type, memory heaps, maxStorageBufferRange, work-group
count limits, subgroup size, shaderInt64), read from the Vulkan loader through ctypes.

The structs below follow vulkan_core.h field by field; tests/test_devices.py checks their
sizes and offsets against the C header when a compiler and the header are installed."""
import ctypes
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import VkInferError


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
    vendor_id: int = 0
    driver_name: str = ""                   # short driver name, e.g. "llvmpipe", "radv"
    max_compute_work_group_size: tuple = (128, 128, 64)
    max_compute_shared_memory_size: int = 16384
    max_memory_allocation_size: int = 0     # 0 when the device does not say
    subgroup_operations: int = 0            # VkSubgroupFeatureFlags usable in compute shaders
    shader_int64: bool = False              # VkPhysicalDeviceFeatures::shaderInt64

    @property
    def device_local_bytes(self) -> int:
        return max((size for size, local in self.heaps if local), default=0)


INSTALL_HINT = ("install the Vulkan loader and a driver (Debian: apt-get install libvulkan1 "
                "mesa-vulkan-drivers; mesa-vulkan-drivers includes lavapipe, a CPU Vulkan device)")
LOADER_NAMES = ("libvulkan.so.1", "libvulkan.so", "libvulkan.1.dylib", "vulkan-1.dll")

VK_SUCCESS, VK_INCOMPLETE, VK_ERROR_INCOMPATIBLE_DRIVER = 0, 5, -9
VK_API_VERSION_1_1 = (1 << 22) | (1 << 12)
VK_API_VERSION_1_2 = (1 << 22) | (2 << 12)
STYPE_APPLICATION_INFO = 0
STYPE_INSTANCE_CREATE_INFO = 1
STYPE_PHYSICAL_DEVICE_PROPERTIES_2 = 1000059001
STYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES = 1000094000
STYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES = 1000168000
STYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES = 1000196000
MEMORY_HEAP_DEVICE_LOCAL_BIT = 0x1
SHADER_STAGE_COMPUTE_BIT = 0x20
DEVICE_TYPES = {0: "other", 1: "integrated", 2: "discrete", 3: "virtual", 4: "cpu"}

u8, u32, i32, u64, f32 = (ctypes.c_uint8, ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64,
                          ctypes.c_float)
ptr = ctypes.c_void_p


def _same(ctype, names: str) -> list:
    return [(name, ctype) for name in names.split()]


class VkApplicationInfo(ctypes.Structure):
    _fields_ = [("sType", i32), ("pNext", ptr), ("pApplicationName", ctypes.c_char_p),
                ("applicationVersion", u32), ("pEngineName", ctypes.c_char_p),
                ("engineVersion", u32), ("apiVersion", u32)]


class VkInstanceCreateInfo(ctypes.Structure):
    _fields_ = [("sType", i32), ("pNext", ptr), ("flags", u32),
                ("pApplicationInfo", ctypes.POINTER(VkApplicationInfo)),
                ("enabledLayerCount", u32), ("ppEnabledLayerNames", ptr),
                ("enabledExtensionCount", u32), ("ppEnabledExtensionNames", ptr)]


# VkPhysicalDeviceFeatures: 55 VkBool32s in the header's order; only shaderInt64 is read.
FEATURE_NAMES = (
    "robustBufferAccess fullDrawIndexUint32 imageCubeArray independentBlend geometryShader "
    "tessellationShader sampleRateShading dualSrcBlend logicOp multiDrawIndirect "
    "drawIndirectFirstInstance depthClamp depthBiasClamp fillModeNonSolid depthBounds wideLines "
    "largePoints alphaToOne multiViewport samplerAnisotropy textureCompressionETC2 "
    "textureCompressionASTC_LDR textureCompressionBC occlusionQueryPrecise pipelineStatisticsQuery "
    "vertexPipelineStoresAndAtomics fragmentStoresAndAtomics shaderTessellationAndGeometryPointSize "
    "shaderImageGatherExtended shaderStorageImageExtendedFormats shaderStorageImageMultisample "
    "shaderStorageImageReadWithoutFormat shaderStorageImageWriteWithoutFormat "
    "shaderUniformBufferArrayDynamicIndexing shaderSampledImageArrayDynamicIndexing "
    "shaderStorageBufferArrayDynamicIndexing shaderStorageImageArrayDynamicIndexing "
    "shaderClipDistance shaderCullDistance shaderFloat64 shaderInt64 shaderInt16 "
    "shaderResourceResidency shaderResourceMinLod sparseBinding sparseResidencyBuffer "
    "sparseResidencyImage2D sparseResidencyImage3D sparseResidency2Samples sparseResidency4Samples "
    "sparseResidency8Samples sparseResidency16Samples sparseResidencyAliased "
    "variableMultisampleRate inheritedQueries")


class VkPhysicalDeviceFeatures(ctypes.Structure):
    _fields_ = _same(u32, FEATURE_NAMES)


class VkPhysicalDeviceLimits(ctypes.Structure):
    _fields_ = [
        *_same(u32, "maxImageDimension1D maxImageDimension2D maxImageDimension3D "
                    "maxImageDimensionCube maxImageArrayLayers maxTexelBufferElements "
                    "maxUniformBufferRange maxStorageBufferRange maxPushConstantsSize "
                    "maxMemoryAllocationCount maxSamplerAllocationCount"),
        *_same(u64, "bufferImageGranularity sparseAddressSpaceSize"),
        *_same(u32, "maxBoundDescriptorSets maxPerStageDescriptorSamplers "
                    "maxPerStageDescriptorUniformBuffers maxPerStageDescriptorStorageBuffers "
                    "maxPerStageDescriptorSampledImages maxPerStageDescriptorStorageImages "
                    "maxPerStageDescriptorInputAttachments maxPerStageResources "
                    "maxDescriptorSetSamplers maxDescriptorSetUniformBuffers "
                    "maxDescriptorSetUniformBuffersDynamic maxDescriptorSetStorageBuffers "
                    "maxDescriptorSetStorageBuffersDynamic maxDescriptorSetSampledImages "
                    "maxDescriptorSetStorageImages maxDescriptorSetInputAttachments "
                    "maxVertexInputAttributes maxVertexInputBindings "
                    "maxVertexInputAttributeOffset maxVertexInputBindingStride "
                    "maxVertexOutputComponents maxTessellationGenerationLevel "
                    "maxTessellationPatchSize maxTessellationControlPerVertexInputComponents "
                    "maxTessellationControlPerVertexOutputComponents "
                    "maxTessellationControlPerPatchOutputComponents "
                    "maxTessellationControlTotalOutputComponents "
                    "maxTessellationEvaluationInputComponents "
                    "maxTessellationEvaluationOutputComponents maxGeometryShaderInvocations "
                    "maxGeometryInputComponents maxGeometryOutputComponents "
                    "maxGeometryOutputVertices maxGeometryTotalOutputComponents "
                    "maxFragmentInputComponents maxFragmentOutputAttachments "
                    "maxFragmentDualSrcAttachments maxFragmentCombinedOutputResources "
                    "maxComputeSharedMemorySize"),
        ("maxComputeWorkGroupCount", u32 * 3),
        ("maxComputeWorkGroupInvocations", u32),
        ("maxComputeWorkGroupSize", u32 * 3),
        *_same(u32, "subPixelPrecisionBits subTexelPrecisionBits mipmapPrecisionBits "
                    "maxDrawIndexedIndexValue maxDrawIndirectCount"),
        *_same(f32, "maxSamplerLodBias maxSamplerAnisotropy"),
        ("maxViewports", u32),
        ("maxViewportDimensions", u32 * 2),
        ("viewportBoundsRange", f32 * 2),
        ("viewportSubPixelBits", u32),
        ("minMemoryMapAlignment", ctypes.c_size_t),
        *_same(u64, "minTexelBufferOffsetAlignment minUniformBufferOffsetAlignment "
                    "minStorageBufferOffsetAlignment"),
        ("minTexelOffset", i32), ("maxTexelOffset", u32),
        ("minTexelGatherOffset", i32), ("maxTexelGatherOffset", u32),
        *_same(f32, "minInterpolationOffset maxInterpolationOffset"),
        *_same(u32, "subPixelInterpolationOffsetBits maxFramebufferWidth maxFramebufferHeight "
                    "maxFramebufferLayers framebufferColorSampleCounts "
                    "framebufferDepthSampleCounts framebufferStencilSampleCounts "
                    "framebufferNoAttachmentsSampleCounts maxColorAttachments "
                    "sampledImageColorSampleCounts sampledImageIntegerSampleCounts "
                    "sampledImageDepthSampleCounts sampledImageStencilSampleCounts "
                    "storageImageSampleCounts maxSampleMaskWords timestampComputeAndGraphics"),
        ("timestampPeriod", f32),
        *_same(u32, "maxClipDistances maxCullDistances maxCombinedClipAndCullDistances "
                    "discreteQueuePriorities"),
        *_same(f32 * 2, "pointSizeRange lineWidthRange"),
        *_same(f32, "pointSizeGranularity lineWidthGranularity"),
        *_same(u32, "strictLines standardSampleLocations"),
        *_same(u64, "optimalBufferCopyOffsetAlignment optimalBufferCopyRowPitchAlignment "
                    "nonCoherentAtomSize"),
    ]


class VkPhysicalDeviceSparseProperties(ctypes.Structure):
    _fields_ = _same(u32, "residencyStandard2DBlockShape residencyStandard2DMultisampleBlockShape "
                          "residencyStandard3DBlockShape residencyAlignedMipSize "
                          "residencyNonResidentStrict")


class VkPhysicalDeviceProperties(ctypes.Structure):
    _fields_ = [*_same(u32, "apiVersion driverVersion vendorID deviceID"),
                ("deviceType", i32), ("deviceName", ctypes.c_char * 256),
                ("pipelineCacheUUID", u8 * 16), ("limits", VkPhysicalDeviceLimits),
                ("sparseProperties", VkPhysicalDeviceSparseProperties)]


class VkPhysicalDeviceProperties2(ctypes.Structure):
    _fields_ = [("sType", i32), ("pNext", ptr), ("properties", VkPhysicalDeviceProperties)]


class VkPhysicalDeviceSubgroupProperties(ctypes.Structure):
    _fields_ = [("sType", i32), ("pNext", ptr), ("subgroupSize", u32),
                ("supportedStages", u32), ("supportedOperations", u32),
                ("quadOperationsInAllStages", u32)]


class VkPhysicalDeviceMaintenance3Properties(ctypes.Structure):
    _fields_ = [("sType", i32), ("pNext", ptr), ("maxPerSetDescriptors", u32),
                ("maxMemoryAllocationSize", u64)]


class VkPhysicalDeviceDriverProperties(ctypes.Structure):
    _fields_ = [("sType", i32), ("pNext", ptr), ("driverID", i32),
                ("driverName", ctypes.c_char * 256), ("driverInfo", ctypes.c_char * 256),
                ("conformanceVersion", u8 * 4)]


class VkMemoryType(ctypes.Structure):
    _fields_ = [("propertyFlags", u32), ("heapIndex", u32)]


class VkMemoryHeap(ctypes.Structure):
    _fields_ = [("size", u64), ("flags", u32)]


class VkPhysicalDeviceMemoryProperties(ctypes.Structure):
    _fields_ = [("memoryTypeCount", u32), ("memoryTypes", VkMemoryType * 32),
                ("memoryHeapCount", u32), ("memoryHeaps", VkMemoryHeap * 16)]


class VkExtensionProperties(ctypes.Structure):
    _fields_ = [("extensionName", ctypes.c_char * 256), ("specVersion", u32)]


def version_string(version: int) -> str:
    return f"{version >> 22 & 0x7F}.{version >> 12 & 0x3FF}.{version & 0xFFF}"


def query_devices() -> list[DeviceInfo]:
    """Every physical device the Vulkan loader sees, in kp's device-index order (both use
    vkEnumeratePhysicalDevices). Queried once per process."""
    return list(_query_once())


@lru_cache(maxsize=None)
def _query_once() -> tuple:
    vk = _load_loader()
    instance = _create_instance(vk)
    try:
        devices = [_describe(vk, i, pd) for i, pd in enumerate(_physical_devices(vk, instance))]
    finally:
        vk.vkDestroyInstance(instance, None)
    if not devices:
        raise VkInferError(f"the Vulkan loader found no device; {INSTALL_HINT}")
    return tuple(devices)


def _load_loader() -> ctypes.CDLL:
    for name in LOADER_NAMES:
        try:
            vk = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise VkInferError(f"the Vulkan loader ({LOADER_NAMES[0]}) is not installed; "
                           f"{INSTALL_HINT}")
    vk.vkCreateInstance.restype = i32
    vk.vkCreateInstance.argtypes = [ctypes.POINTER(VkInstanceCreateInfo), ptr, ctypes.POINTER(ptr)]
    vk.vkDestroyInstance.restype = None
    vk.vkDestroyInstance.argtypes = [ptr, ptr]
    vk.vkEnumeratePhysicalDevices.restype = i32
    vk.vkEnumeratePhysicalDevices.argtypes = [ptr, ctypes.POINTER(u32), ctypes.POINTER(ptr)]
    vk.vkEnumerateDeviceExtensionProperties.restype = i32
    vk.vkEnumerateDeviceExtensionProperties.argtypes = [ptr, ctypes.c_char_p, ctypes.POINTER(u32),
                                                        ctypes.POINTER(VkExtensionProperties)]
    vk.vkGetPhysicalDeviceProperties.restype = None
    vk.vkGetPhysicalDeviceProperties.argtypes = [ptr, ctypes.POINTER(VkPhysicalDeviceProperties)]
    vk.vkGetPhysicalDeviceFeatures.restype = None
    vk.vkGetPhysicalDeviceFeatures.argtypes = [ptr, ctypes.POINTER(VkPhysicalDeviceFeatures)]
    vk.vkGetPhysicalDeviceMemoryProperties.restype = None
    vk.vkGetPhysicalDeviceMemoryProperties.argtypes = [
        ptr, ctypes.POINTER(VkPhysicalDeviceMemoryProperties)]
    if hasattr(vk, "vkGetPhysicalDeviceProperties2"):   # exported by every 1.1+ loader
        vk.vkGetPhysicalDeviceProperties2.restype = None
        vk.vkGetPhysicalDeviceProperties2.argtypes = [
            ptr, ctypes.POINTER(VkPhysicalDeviceProperties2)]
    return vk


def _create_instance(vk) -> ptr:
    app = VkApplicationInfo(STYPE_APPLICATION_INFO, None, b"vkinfer", 1, b"vkinfer", 1,
                            VK_API_VERSION_1_1)
    info = VkInstanceCreateInfo(STYPE_INSTANCE_CREATE_INFO, None, 0, ctypes.pointer(app),
                                0, None, 0, None)
    instance = ptr()
    res = vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance))
    if res == VK_ERROR_INCOMPATIBLE_DRIVER:
        raise VkInferError(f"no Vulkan 1.1 driver found (vkCreateInstance returned "
                           f"VK_ERROR_INCOMPATIBLE_DRIVER); {INSTALL_HINT}")
    if res != VK_SUCCESS:
        raise VkInferError(f"vkCreateInstance failed with VkResult {res}; {INSTALL_HINT}")
    return instance


def _physical_devices(vk, instance) -> list:
    count = u32(0)
    _check(vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None),
           "vkEnumeratePhysicalDevices")
    handles = (ptr * count.value)()
    _check(vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), handles),
           "vkEnumeratePhysicalDevices")
    return list(handles[:count.value])


def _device_extensions(vk, pd) -> set[str]:
    count = u32(0)
    _check(vk.vkEnumerateDeviceExtensionProperties(pd, None, ctypes.byref(count), None),
           "vkEnumerateDeviceExtensionProperties")
    exts = (VkExtensionProperties * count.value)()
    _check(vk.vkEnumerateDeviceExtensionProperties(pd, None, ctypes.byref(count), exts),
           "vkEnumerateDeviceExtensionProperties")
    return {e.extensionName.decode() for e in exts[:count.value]}


def _check(res: int, what: str):
    if res not in (VK_SUCCESS, VK_INCOMPLETE):
        raise VkInferError(f"{what} failed with VkResult {res}")


def _describe(vk, index: int, pd) -> DeviceInfo:
    props = VkPhysicalDeviceProperties()
    vk.vkGetPhysicalDeviceProperties(pd, ctypes.byref(props))
    limits = props.limits
    info = DeviceInfo(
        index=index,
        name=props.deviceName.decode(errors="replace"),
        device_type=DEVICE_TYPES.get(props.deviceType, "other"),
        driver=f"driverVersion {props.driverVersion:#x}",
        api_version=version_string(props.apiVersion),
        max_storage_buffer_range=limits.maxStorageBufferRange,
        max_compute_work_group_count=tuple(limits.maxComputeWorkGroupCount),
        max_compute_work_group_invocations=limits.maxComputeWorkGroupInvocations,
        max_push_constants_size=limits.maxPushConstantsSize,
        max_per_stage_storage_buffers=limits.maxPerStageDescriptorStorageBuffers,
        heaps=_heaps(vk, pd),
        vendor_id=props.vendorID,
        max_compute_work_group_size=tuple(limits.maxComputeWorkGroupSize),
        max_compute_shared_memory_size=limits.maxComputeSharedMemorySize,
    )
    features = VkPhysicalDeviceFeatures()
    vk.vkGetPhysicalDeviceFeatures(pd, ctypes.byref(features))
    info.shader_int64 = bool(features.shaderInt64)
    if props.apiVersion >= VK_API_VERSION_1_1 and hasattr(vk, "vkGetPhysicalDeviceProperties2"):
        _add_properties2(vk, pd, props.apiVersion, info)
    return info


def _add_properties2(vk, pd, api_version: int, info: DeviceInfo):
    """Subgroup size, max allocation size and, where the device has them, driver name/info."""
    subgroup = VkPhysicalDeviceSubgroupProperties(STYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES)
    maint3 = VkPhysicalDeviceMaintenance3Properties(STYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES)
    driver = VkPhysicalDeviceDriverProperties(STYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES)
    subgroup.pNext = ctypes.addressof(maint3)
    has_driver = (api_version >= VK_API_VERSION_1_2
                  or "VK_KHR_driver_properties" in _device_extensions(vk, pd))
    if has_driver:
        maint3.pNext = ctypes.addressof(driver)
    props2 = VkPhysicalDeviceProperties2(STYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                         ctypes.addressof(subgroup))
    vk.vkGetPhysicalDeviceProperties2(pd, ctypes.byref(props2))
    info.subgroup_size = subgroup.subgroupSize
    if subgroup.supportedStages & SHADER_STAGE_COMPUTE_BIT:
        info.subgroup_operations = subgroup.supportedOperations
    info.max_memory_allocation_size = maint3.maxMemoryAllocationSize
    if has_driver:
        info.driver_name = driver.driverName.decode(errors="replace")
        details = driver.driverInfo.decode(errors="replace")
        info.driver = f"{info.driver_name} ({details})" if details else info.driver_name


def _heaps(vk, pd) -> list:
    mem = VkPhysicalDeviceMemoryProperties()
    vk.vkGetPhysicalDeviceMemoryProperties(pd, ctypes.byref(mem))
    return [(h.size, bool(h.flags & MEMORY_HEAP_DEVICE_LOCAL_BIT))
            for h in mem.memoryHeaps[:mem.memoryHeapCount]]
