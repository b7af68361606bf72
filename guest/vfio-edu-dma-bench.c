/*
 * vfio-edu-dma-bench: edu DMA round trips through VFIO, for rates. Maps one page with
 * VFIO_IOMMU_MAP_DMA, then N times: DMA 64 bytes RAM -> edu buffer and back, polling the
 * command register until each completes; prints round trips per second.
 *
 *   vfio-edu-dma-bench <bdf> [--count N]
 */
#include "vfio-common.h"

#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_CNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_BUF 0x40000ull
#define IOVA 0x200000ull

static int dev_fd;
static uint64_t bar0_off;

static uint64_t rd64(uint64_t off)
{
	uint64_t v = ~0ull;

	if (pread(dev_fd, &v, 8, (off_t)(bar0_off + off)) != 8)
		return ~0ull;
	return v;
}

static void wr64(uint64_t off, uint64_t v)
{
	if (pwrite(dev_fd, &v, 8, (off_t)(bar0_off + off)) != 8)
		fprintf(stderr, "pwrite 0x%llx: %s\n", (unsigned long long)off, strerror(errno));
}

static int dma(uint64_t src, uint64_t dst, int to_ram)
{
	uint64_t deadline = now_ns() + 5000000000ull;

	wr64(EDU_DMA_SRC, src);
	wr64(EDU_DMA_DST, dst);
	wr64(EDU_DMA_CNT, 64);
	wr64(EDU_DMA_CMD, 1 | (to_ram ? 2 : 0));
	while (rd64(EDU_DMA_CMD) & 1) {
		if (now_ns() > deadline)
			return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *bdf = NULL;
	unsigned count = 200;
	struct vfio_dev v;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--count") && i + 1 < argc)
			count = (unsigned)parse_u64(argv[++i]);
		else if (argv[i][0] != '-' && !bdf)
			bdf = argv[i];
		else {
			fprintf(stderr, "usage: %s <bdf> [--count N]\n", argv[0]);
			return 2;
		}
	}
	if (!bdf || count == 0) {
		fprintf(stderr, "usage: %s <bdf> [--count N]\n", argv[0]);
		return 2;
	}
	if (vfio_open(bdf, &v) < 0)
		return 1;
	dev_fd = v.device;
	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	struct vfio_region_info bar0 = { .argsz = sizeof(bar0), .index = VFIO_PCI_BAR0_REGION_INDEX };
	if (ioctl(v.device, VFIO_DEVICE_GET_REGION_INFO, &cfg) < 0 ||
	    ioctl(v.device, VFIO_DEVICE_GET_REGION_INFO, &bar0) < 0) {
		result("dma-bench", 0, "region info: %s", strerror(errno));
		return 1;
	}
	bar0_off = bar0.offset;
	uint16_t cmd = 0;
	if (pread(v.device, &cmd, 2, (off_t)(cfg.offset + 4)) == 2) {
		cmd |= 0x6;
		if (pwrite(v.device, &cmd, 2, (off_t)(cfg.offset + 4)) != 2)
			fprintf(stderr, "command write: %s\n", strerror(errno));
	}
	long page = sysconf(_SC_PAGESIZE);
	uint8_t *buf = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED || vfio_map(&v, buf, IOVA, (uint64_t)page) != 0) {
		result("dma-bench", 0, "map: %s", strerror(errno));
		return 1;
	}
	memset(buf, 0x5a, 64);
	unsigned done = 0;
	uint64_t t0 = now_ns();
	for (; done < count; done++) {
		if (dma(IOVA, EDU_BUF, 0) || dma(EDU_BUF, IOVA + 64, 1))
			break;
	}
	uint64_t ns = now_ns() - t0;
	int same = memcmp(buf, buf + 64, 64) == 0;
	result("dma-bench", done == count && same, "count=%u roundtrips_per_s=%.1f ns_per_roundtrip=%.0f data=%s", done,
	       done ? 1e9 * done / (double)ns : 0.0, done ? (double)ns / done : 0.0, same ? "ok" : "mismatch");
	vfio_unmap(&v, IOVA, (uint64_t)page);
	vfio_close(&v);
	return g_failures ? 1 : 0;
}
