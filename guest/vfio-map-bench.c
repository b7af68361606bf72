/*
 * vfio-map-bench: VFIO_IOMMU_MAP_DMA / VFIO_IOMMU_UNMAP_DMA rates through the guest's IOMMU
 * (each map/unmap becomes IOMMU driver work: MAP/UNMAP requests for virtio-iommu), and the
 * time to map one large hugepage-backed buffer with a single VFIO_IOMMU_MAP_DMA.
 *
 *   vfio-map-bench <bdf> [--count N] [--huge-mib M]
 *
 * <bdf> is any PCI device behind the IOMMU that may be bound to vfio-pci (a container needs a
 * group before VFIO_SET_IOMMU). The hugepage part uses 2 MiB pages (MAP_HUGETLB) and is skipped
 * when the guest has fewer than M MiB of free hugepages (boot it with hugepages=N).
 * Lines: RESULT name=map-4k|unmap-4k|map-huge|unmap-huge status=... detail=key=value ...
 */
#include "vfio-common.h"

static long meminfo_kb(const char *key)
{
	char line[256];
	long val = -1;
	size_t klen = strlen(key);
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, key, klen) && line[klen] == ':') {
			val = strtol(line + klen + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return val;
}

int main(int argc, char **argv)
{
	const char *bdf = NULL;
	unsigned count = 1000;
	unsigned huge_mib = 1024;
	struct vfio_dev v;
	const uint64_t base4k = 0x10000000ull;    /* 256 MiB */
	const uint64_t basehuge = 0x100000000ull; /* 4 GiB, 1 GiB aligned */

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--count") && i + 1 < argc)
			count = (unsigned)parse_u64(argv[++i]);
		else if (!strcmp(argv[i], "--huge-mib") && i + 1 < argc)
			huge_mib = (unsigned)parse_u64(argv[++i]);
		else if (argv[i][0] != '-' && !bdf)
			bdf = argv[i];
		else {
			fprintf(stderr, "usage: %s <bdf> [--count N] [--huge-mib M]\n", argv[0]);
			return 2;
		}
	}
	if (!bdf || count == 0) {
		fprintf(stderr, "usage: %s <bdf> [--count N] [--huge-mib M]\n", argv[0]);
		return 2;
	}
	if (vfio_open(bdf, &v) < 0)
		return 1;

	/* count separate 4 KiB mappings, then count separate unmaps. */
	size_t page = 4096;
	uint8_t *buf = mmap(NULL, count * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
			    -1, 0);
	if (buf == MAP_FAILED) {
		result("map-4k", 0, "mmap %u pages: %s", count, strerror(errno));
		return 1;
	}
	uint64_t t0 = now_ns();
	unsigned done = 0;
	int err = 0;
	for (; done < count; done++) {
		err = vfio_map(&v, buf + done * page, base4k + done * page, page);
		if (err)
			break;
	}
	uint64_t t1 = now_ns();
	double per = done ? (double)(t1 - t0) / done : 0;
	result("map-4k", done == count, "count=%u ns_per_op=%.0f ops_per_s=%.0f err=%s", done, per,
	       per > 0 ? 1e9 / per : 0, err ? strerror(-err) : "none");
	unsigned undone = 0;
	t0 = now_ns();
	for (unsigned i = 0; i < done; i++) {
		if (vfio_unmap(&v, base4k + i * page, page) == (int64_t)page)
			undone++;
	}
	t1 = now_ns();
	per = undone ? (double)(t1 - t0) / undone : 0;
	result("unmap-4k", undone == done && done == count, "count=%u ns_per_op=%.0f ops_per_s=%.0f", undone,
	       per, per > 0 ? 1e9 / per : 0);
	munmap(buf, count * page);

	/* One contiguous 2 MiB-backed buffer of huge_mib MiB, mapped with one MAP_DMA. */
	long hp_kb = meminfo_kb("Hugepagesize");
	long hp_free = meminfo_kb("HugePages_Free");
	uint64_t need = (uint64_t)huge_mib << 20;
	if (hp_kb <= 0 || hp_free < 0 || (uint64_t)hp_free * (uint64_t)hp_kb * 1024 < need) {
		char why[128];
		snprintf(why, sizeof(why), "not enough hugepages: free=%ld size_kb=%ld need_mib=%u", hp_free,
			 hp_kb, huge_mib);
		result_skip("map-huge", why);
	} else {
		t0 = now_ns();
		uint8_t *h = mmap(NULL, need, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
		t1 = now_ns();
		if (h == MAP_FAILED) {
			result("map-huge", 0, "mmap MAP_HUGETLB %u MiB: %s", huge_mib, strerror(errno));
		} else {
			double populate_ms = (double)(t1 - t0) / 1e6;
			t0 = now_ns();
			err = vfio_map(&v, h, basehuge, need);
			t1 = now_ns();
			result("map-huge", err == 0,
			       "mib=%u hugepage_kb=%ld map_ms=%.3f populate_ms=%.1f iova=0x%llx err=%s", huge_mib,
			       hp_kb, (double)(t1 - t0) / 1e6, populate_ms, (unsigned long long)basehuge,
			       err ? strerror(-err) : "none");
			if (!err) {
				t0 = now_ns();
				int64_t n = vfio_unmap(&v, basehuge, need);
				t1 = now_ns();
				result("unmap-huge", n == (int64_t)need, "mib=%u unmap_ms=%.3f unmapped=%lld", huge_mib,
				       (double)(t1 - t0) / 1e6, (long long)n);
			}
			munmap(h, need);
		}
	}
	vfio_close(&v);
	printf("RESULT name=vfio-map-bench status=%s detail=failures=%d\n", g_failures ? "fail" : "pass",
	       g_failures);
	return g_failures ? 1 : 0;
}
