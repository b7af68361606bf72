/*
 * vfio-edu-test: drive QEMU's "edu" PCI device (1234:11e8) from guest userspace through VFIO
 * and check that its DMA goes through the (virtual) IOMMU mappings made with
 * VFIO_IOMMU_MAP_DMA, and is blocked after VFIO_IOMMU_UNMAP_DMA.
 *
 *   vfio-edu-test <bdf> [--iova ADDR] [--count N] [--pio]
 *
 * edu BAR0 registers (QEMU docs/specs/edu.rst): 0x00 id (0x010000ed), 0x04 liveness (reads
 * back ~value), 0x80 DMA source, 0x88 DMA destination, 0x90 DMA count, 0x98 DMA command
 * (bit0 start/busy, bit1 direction: 0 = RAM to device, 1 = device to RAM, bit2 irq when done).
 * The device's own DMA buffer is at device address 0x40000 (4 KiB). edu clamps DMA addresses to
 * 28 bits, so the IOVA must be below 256 MiB.
 *
 * Registers are accessed through the mmap of the BAR0 region, or with pread/pwrite on the
 * device fd (--pio, or when the region cannot be mmapped).
 */
#include "vfio-common.h"

#define EDU_ID 0x00
#define EDU_LIVENESS 0x04
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_CNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_CMD_START 0x1
#define EDU_CMD_TO_RAM 0x2
#define EDU_BUF 0x40000ull
#define EDU_BUF_SIZE 4096u

struct region {
	int fd;
	uint64_t offset;
	uint64_t size;
	volatile uint8_t *map;
};

static struct region bar0, cfg;

static int region_info(int device, uint32_t index, struct region *r)
{
	struct vfio_region_info info = { .argsz = sizeof(info), .index = index };

	if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &info) < 0)
		return -errno;
	r->fd = device;
	r->offset = info.offset;
	r->size = info.size;
	r->map = NULL;
	return (int)info.flags;
}

static uint64_t rd(struct region *r, uint64_t off, int width)
{
	uint64_t v = 0;

	if (r->map) {
		if (width == 8)
			return *(volatile uint64_t *)(r->map + off);
		if (width == 4)
			return *(volatile uint32_t *)(r->map + off);
		return *(volatile uint16_t *)(r->map + off);
	}
	if (pread(r->fd, &v, (size_t)width, (off_t)(r->offset + off)) != width)
		fprintf(stderr, "pread off=0x%llx: %s\n", (unsigned long long)off, strerror(errno));
	return v;
}

static void wr(struct region *r, uint64_t off, uint64_t v, int width)
{
	if (r->map) {
		if (width == 8)
			*(volatile uint64_t *)(r->map + off) = v;
		else if (width == 4)
			*(volatile uint32_t *)(r->map + off) = (uint32_t)v;
		else
			*(volatile uint16_t *)(r->map + off) = (uint16_t)v;
		return;
	}
	if (pwrite(r->fd, &v, (size_t)width, (off_t)(r->offset + off)) != width)
		fprintf(stderr, "pwrite off=0x%llx: %s\n", (unsigned long long)off, strerror(errno));
}

/* Start one edu DMA and wait for the busy bit to clear (edu completes after ~100 ms). */
static int edu_dma(uint64_t src, uint64_t dst, uint32_t count, int to_ram)
{
	uint64_t deadline = now_ns() + 5000000000ull;

	wr(&bar0, EDU_DMA_SRC, src, 8);
	wr(&bar0, EDU_DMA_DST, dst, 8);
	wr(&bar0, EDU_DMA_CNT, count, 8);
	wr(&bar0, EDU_DMA_CMD, EDU_CMD_START | (to_ram ? EDU_CMD_TO_RAM : 0), 8);
	while (rd(&bar0, EDU_DMA_CMD, 8) & EDU_CMD_START) {
		if (now_ns() > deadline)
			return -ETIMEDOUT;
		usleep(1000);
	}
	return 0;
}

static void fill(uint8_t *p, uint32_t n, uint32_t seed)
{
	for (uint32_t i = 0; i < n; i++)
		p[i] = (uint8_t)((i * 31u + seed * 7u + (i >> 8)) ^ seed);
}

static uint32_t first_diff(const uint8_t *a, const uint8_t *b, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return i;
	return n;
}

int main(int argc, char **argv)
{
	const char *bdf = NULL;
	uint64_t iova = 0x100000;
	uint32_t count = EDU_BUF_SIZE;
	int pio = 0;
	struct vfio_dev v;
	long page = sysconf(_SC_PAGESIZE);

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--iova") && i + 1 < argc)
			iova = parse_u64(argv[++i]);
		else if (!strcmp(argv[i], "--count") && i + 1 < argc)
			count = (uint32_t)parse_u64(argv[++i]);
		else if (!strcmp(argv[i], "--pio"))
			pio = 1;
		else if (argv[i][0] != '-' && !bdf)
			bdf = argv[i];
		else {
			fprintf(stderr, "usage: %s <bdf> [--iova ADDR] [--count N] [--pio]\n", argv[0]);
			return 2;
		}
	}
	if (!bdf) {
		fprintf(stderr, "usage: %s <bdf> [--iova ADDR] [--count N] [--pio]\n", argv[0]);
		return 2;
	}
	if (count == 0 || count > EDU_BUF_SIZE || (uint64_t)page < count || iova >= (1ull << 28) ||
	    iova % (uint64_t)page) {
		fprintf(stderr, "count must be 1..4096 and iova page-aligned below 256 MiB\n");
		return 2;
	}
	if (vfio_open(bdf, &v) < 0)
		return 1;

	/* Enable memory decoding and bus mastering in the command register. */
	if (region_info(v.device, VFIO_PCI_CONFIG_REGION_INDEX, &cfg) < 0) {
		result("edu-config", 0, "config region: %s", strerror(errno));
		return 1;
	}
	uint16_t cmd = (uint16_t)rd(&cfg, 4, 2);
	wr(&cfg, 4, cmd | 0x6, 2);

	int flags = region_info(v.device, VFIO_PCI_BAR0_REGION_INDEX, &bar0);
	if (flags < 0 || bar0.size < 0x1000) {
		result("edu-bar0", 0, "BAR0 region info failed or too small (flags=%d size=%llu)", flags,
		       (unsigned long long)bar0.size);
		return 1;
	}
	const char *access = "pread/pwrite";
	if (!pio && (flags & VFIO_REGION_INFO_FLAG_MMAP)) {
		void *m = mmap(NULL, bar0.size, PROT_READ | PROT_WRITE, MAP_SHARED, v.device, (off_t)bar0.offset);
		if (m != MAP_FAILED) {
			bar0.map = m;
			access = "mmap";
		}
	}

	uint32_t id = (uint32_t)rd(&bar0, EDU_ID, 4);
	wr(&bar0, EDU_LIVENESS, 0x12345678, 4);
	uint32_t live = (uint32_t)rd(&bar0, EDU_LIVENESS, 4);
	result("edu-id", id == 0x010000ed && live == (uint32_t)~0x12345678u,
	       "id=0x%08x liveness=0x%08x access=%s bar0_size=0x%llx", id, live, access,
	       (unsigned long long)bar0.size);
	if (bar0.map) {
		/* The pread path must agree with the mmap path. */
		struct region r = bar0;
		r.map = NULL;
		uint32_t id2 = (uint32_t)rd(&r, EDU_ID, 4);
		result("edu-pread", id2 == id, "id via pread=0x%08x", id2);
	}

	/* Two pages: page 0 is the DMA source, page 1 the destination. */
	size_t len = 2 * (size_t)page;
	uint8_t *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		result("dma-map", 0, "mmap: %s", strerror(errno));
		return 1;
	}
	uint8_t *src = buf, *dst = buf + page;
	uint8_t expect[EDU_BUF_SIZE];
	memset(buf, 0, len);
	int err = vfio_map(&v, buf, iova, len);
	result("dma-map", err == 0, "iova=0x%llx size=0x%zx err=%s", (unsigned long long)iova, len,
	       err ? strerror(-err) : "none");
	if (err)
		return 1;

	/* RAM -> device buffer -> RAM, through the IOMMU. */
	fill(src, count, 1);
	memcpy(expect, src, count);
	memset(dst, 0xee, count);
	int e1 = edu_dma(iova, EDU_BUF, count, 0);
	int e2 = edu_dma(EDU_BUF, iova + (uint64_t)page, count, 1);
	uint32_t d = first_diff(dst, expect, count);
	result("dma-roundtrip", !e1 && !e2 && d == count,
	       "count=%u to_device=%s to_ram=%s first_mismatch=%d", count, e1 ? strerror(-e1) : "ok",
	       e2 ? strerror(-e2) : "ok", d == count ? -1 : (int)d);

	/* A second round with another pattern, so a stale device buffer cannot pass. */
	fill(src, count, 2);
	memcpy(expect, src, count);
	e1 = edu_dma(iova, EDU_BUF, count, 0);
	e2 = edu_dma(EDU_BUF, iova + (uint64_t)page, count, 1);
	d = first_diff(dst, expect, count);
	result("dma-roundtrip-2", !e1 && !e2 && d == count, "count=%u first_mismatch=%d", count,
	       d == count ? -1 : (int)d);

	/* Unmap; a device write to that IOVA must fault and leave memory untouched. */
	int64_t unmapped = vfio_unmap(&v, iova, len);
	result("dma-unmap", unmapped == (int64_t)len, "unmapped=%lld", (long long)unmapped);
	memset(dst, 0x5a, count);
	uint8_t sentinel[EDU_BUF_SIZE];
	memset(sentinel, 0x5a, count);
	e2 = edu_dma(EDU_BUF, iova + (uint64_t)page, count, 1);
	d = first_diff(dst, sentinel, count);
	result("dma-after-unmap-blocked", !e2 && d == count,
	       "dma=%s first_changed_byte=%d (expect -1; guest log should show the IOMMU fault)",
	       e2 ? strerror(-e2) : "completed", d == count ? -1 : (int)d);

	/*
	 * A device read from the unmapped IOVA must not bring RAM contents into the device: fill the
	 * source page with pattern 3, DMA from the unmapped IOVA into the device buffer, then map
	 * again and read the device buffer back. It must not hold pattern 3 (QEMU fills a faulting
	 * read with zeros or leaves the buffer alone; either way the RAM contents stay private).
	 */
	uint8_t leaked[EDU_BUF_SIZE];
	fill(src, count, 3);
	memcpy(leaked, src, count);
	e1 = edu_dma(iova, EDU_BUF, count, 0);
	err = vfio_map(&v, buf, iova, len);
	memset(dst, 0xa5, count);
	e2 = err ? err : edu_dma(EDU_BUF, iova + (uint64_t)page, count, 1);
	int got_leak = first_diff(dst, leaked, count) == count;
	int got_p2 = first_diff(dst, expect, count) == count;
	int untouched = 1;
	for (uint32_t i = 0; i < count; i++)
		if (dst[i] != 0xa5)
			untouched = 0;
	result("dma-read-after-unmap-blocked", !e1 && !e2 && !got_leak && !untouched,
	       "remap=%s device_buffer=%s", err ? strerror(-err) : "ok",
	       got_leak ? "LEAKED-pattern3" : got_p2 ? "kept-pattern2" : untouched ? "readback-failed" : "other");
	vfio_unmap(&v, iova, len);

	if (bar0.map)
		munmap((void *)bar0.map, bar0.size);
	vfio_close(&v);
	printf("RESULT name=vfio-edu-test status=%s detail=failures=%d\n", g_failures ? "fail" : "pass",
	       g_failures);
	return g_failures ? 1 : 0;
}
