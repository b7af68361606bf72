/*
 * Shared helpers for the guest-side VFIO programs (vfio-edu-test, vfio-map-bench).
 * Written against the VFIO UAPI in <linux/vfio.h> (type1 v2 IOMMU, container + group API).
 *
 * Output convention: one line per check,
 *   RESULT name=<id> status=pass|fail|skip detail=<free text to end of line>
 * which tools/guest-lab parses from the serial console.
 */
#ifndef VIOMMU_VFIO_COMMON_H
#define VIOMMU_VFIO_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int g_failures;

static void result(const char *name, int pass, const char *fmt, ...)
{
	char detail[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	if (!pass)
		g_failures++;
	printf("RESULT name=%s status=%s detail=%s\n", name, pass ? "pass" : "fail", detail);
	fflush(stdout);
}

__attribute__((unused)) static void result_skip(const char *name, const char *why)
{
	printf("RESULT name=%s status=skip detail=%s\n", name, why);
	fflush(stdout);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int write_file(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, value, strlen(value));
	int err = n < 0 ? -errno : 0;
	close(fd);
	return err;
}

/* Bind the PCI device at bdf (e.g. "0000:00:03.0") to vfio-pci through driver_override. */
static int bind_vfio_pci(const char *bdf)
{
	char path[256], link[256];
	ssize_t n;
	int err;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/driver", bdf);
	n = readlink(path, link, sizeof(link) - 1);
	if (n > 0) {
		link[n] = 0;
		if (strstr(link, "/vfio-pci"))
			return 0;
		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/driver/unbind", bdf);
		err = write_file(path, bdf);
		if (err) {
			fprintf(stderr, "unbind %s: %s\n", bdf, strerror(-err));
			return err;
		}
	}
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/driver_override", bdf);
	err = write_file(path, "vfio-pci");
	if (err) {
		fprintf(stderr, "driver_override %s: %s\n", bdf, strerror(-err));
		return err;
	}
	err = write_file("/sys/bus/pci/drivers_probe", bdf);
	if (err) {
		fprintf(stderr, "drivers_probe %s: %s\n", bdf, strerror(-err));
		return err;
	}
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/driver", bdf);
	n = readlink(path, link, sizeof(link) - 1);
	if (n <= 0)
		return -ENODEV;
	link[n] = 0;
	return strstr(link, "/vfio-pci") ? 0 : -ENODEV;
}

static int iommu_group_of(const char *bdf)
{
	char path[256], link[256];
	ssize_t n;
	const char *slash;

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", bdf);
	n = readlink(path, link, sizeof(link) - 1);
	if (n <= 0)
		return -1;
	link[n] = 0;
	slash = strrchr(link, '/');
	return atoi(slash ? slash + 1 : link);
}

struct vfio_dev {
	int container;
	int group;
	int device;
	int group_id;
	uint64_t iova_pgsizes;
};

/* Container + group + type1v2 IOMMU + device fd. Prints a RESULT line for the setup. */
static int vfio_open(const char *bdf, struct vfio_dev *v)
{
	char path[64];
	struct vfio_group_status status = { .argsz = sizeof(status) };
	struct vfio_iommu_type1_info info = { .argsz = sizeof(info) };
	int api;

	memset(v, 0, sizeof(*v));
	v->container = v->group = v->device = -1;
	int err = bind_vfio_pci(bdf);
	if (err) {
		result("vfio-bind", 0, "bdf=%s err=%s", bdf, strerror(-err));
		return -1;
	}
	v->group_id = iommu_group_of(bdf);
	if (v->group_id < 0) {
		result("vfio-bind", 0, "bdf=%s has no iommu_group", bdf);
		return -1;
	}
	v->container = open("/dev/vfio/vfio", O_RDWR);
	if (v->container < 0) {
		result("vfio-container", 0, "open /dev/vfio/vfio: %s", strerror(errno));
		return -1;
	}
	api = ioctl(v->container, VFIO_GET_API_VERSION);
	if (api != VFIO_API_VERSION) {
		result("vfio-container", 0, "api version %d", api);
		return -1;
	}
	if (ioctl(v->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0) {
		result("vfio-container", 0, "no VFIO_TYPE1v2_IOMMU");
		return -1;
	}
	snprintf(path, sizeof(path), "/dev/vfio/%d", v->group_id);
	v->group = open(path, O_RDWR);
	if (v->group < 0) {
		result("vfio-group", 0, "open %s: %s", path, strerror(errno));
		return -1;
	}
	if (ioctl(v->group, VFIO_GROUP_GET_STATUS, &status) < 0 ||
	    !(status.flags & VFIO_GROUP_FLAGS_VIABLE)) {
		result("vfio-group", 0, "group %d not viable (flags=0x%x)", v->group_id, status.flags);
		return -1;
	}
	if (ioctl(v->group, VFIO_GROUP_SET_CONTAINER, &v->container) < 0) {
		result("vfio-group", 0, "SET_CONTAINER: %s", strerror(errno));
		return -1;
	}
	if (ioctl(v->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) {
		result("vfio-group", 0, "SET_IOMMU type1v2: %s", strerror(errno));
		return -1;
	}
	if (ioctl(v->container, VFIO_IOMMU_GET_INFO, &info) == 0 && (info.flags & VFIO_IOMMU_INFO_PGSIZES))
		v->iova_pgsizes = info.iova_pgsizes;
	v->device = ioctl(v->group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (v->device < 0) {
		result("vfio-device", 0, "GET_DEVICE_FD %s: %s", bdf, strerror(errno));
		return -1;
	}
	result("vfio-open", 1, "bdf=%s group=%d iova_pgsizes=0x%llx", bdf, v->group_id,
	       (unsigned long long)v->iova_pgsizes);
	return 0;
}

__attribute__((unused)) static int vfio_map(struct vfio_dev *v, void *vaddr, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uint64_t)(uintptr_t)vaddr,
		.iova = iova,
		.size = size,
	};
	return ioctl(v->container, VFIO_IOMMU_MAP_DMA, &map) < 0 ? -errno : 0;
}

/* Returns the number of bytes unmapped, or -errno. */
__attribute__((unused)) static int64_t vfio_unmap(struct vfio_dev *v, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_unmap unmap = {
		.argsz = sizeof(unmap),
		.flags = 0,
		.iova = iova,
		.size = size,
	};
	if (ioctl(v->container, VFIO_IOMMU_UNMAP_DMA, &unmap) < 0)
		return -errno;
	return (int64_t)unmap.size;
}

static void vfio_close(struct vfio_dev *v)
{
	if (v->device >= 0)
		close(v->device);
	if (v->group >= 0)
		close(v->group);
	if (v->container >= 0)
		close(v->container);
}

static uint64_t parse_u64(const char *s)
{
	return strtoull(s, NULL, 0);
}

#endif
