/*
 * vfio-edu-msi: the edu device's MSI through VFIO. Enables MSI vector 0 with an eventfd
 * (VFIO_DEVICE_SET_IRQS), then N times raises the edu interrupt (register 0x60), waits for the
 * eventfd, and acknowledges it (0x64). Under nested assignment this checks the whole interrupt
 * path: device MSI -> host VFIO eventfd -> KVM irqfd -> guest vfio-pci -> this eventfd.
 *
 * With --intx the same over INTx (edu asserts its pin while an interrupt is pending and MSI is
 * off): VFIO masks the line when it fires (automasked), so after each acknowledgement the line
 * is unmasked again (VFIO_IRQ_SET_ACTION_UNMASK). Results are named intx-* then.
 *
 *   vfio-edu-msi <bdf> [--count N] [--intx]
 */
#include "vfio-common.h"

#include <poll.h>
#include <sys/eventfd.h>

#define EDU_IRQ_STATUS 0x24
#define EDU_IRQ_RAISE 0x60
#define EDU_IRQ_ACK 0x64

static uint32_t rd32(int device, uint64_t base, uint64_t off)
{
	uint32_t v = 0xffffffff;

	if (pread(device, &v, 4, (off_t)(base + off)) != 4)
		fprintf(stderr, "pread 0x%llx: %s\n", (unsigned long long)off, strerror(errno));
	return v;
}

static void wr32(int device, uint64_t base, uint64_t off, uint32_t v)
{
	if (pwrite(device, &v, 4, (off_t)(base + off)) != 4)
		fprintf(stderr, "pwrite 0x%llx: %s\n", (unsigned long long)off, strerror(errno));
}

static int set_irq(int device, unsigned index, int fd)
{
	char buf[sizeof(struct vfio_irq_set) + sizeof(int32_t)];
	struct vfio_irq_set *set = (struct vfio_irq_set *)buf;

	memset(buf, 0, sizeof(buf));
	set->argsz = fd >= 0 ? sizeof(buf) : sizeof(*set);
	set->flags = VFIO_IRQ_SET_ACTION_TRIGGER | (fd >= 0 ? VFIO_IRQ_SET_DATA_EVENTFD : VFIO_IRQ_SET_DATA_NONE);
	set->index = index;
	set->start = 0;
	set->count = fd >= 0 ? 1 : 0;
	if (fd >= 0)
		memcpy(set->data, &fd, sizeof(int32_t));
	return ioctl(device, VFIO_DEVICE_SET_IRQS, set) < 0 ? -errno : 0;
}

static int unmask_irq(int device, unsigned index)
{
	struct vfio_irq_set set = {
		.argsz = sizeof(set),
		.flags = VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_DATA_NONE,
		.index = index,
		.start = 0,
		.count = 1,
	};
	return ioctl(device, VFIO_DEVICE_SET_IRQS, &set) < 0 ? -errno : 0;
}

int main(int argc, char **argv)
{
	const char *bdf = NULL;
	unsigned count = 3;
	int intx = 0;
	struct vfio_dev v;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--count") && i + 1 < argc)
			count = (unsigned)parse_u64(argv[++i]);
		else if (!strcmp(argv[i], "--intx"))
			intx = 1;
		else if (argv[i][0] != '-' && !bdf)
			bdf = argv[i];
		else {
			fprintf(stderr, "usage: %s <bdf> [--count N] [--intx]\n", argv[0]);
			return 2;
		}
	}
	if (!bdf || count == 0 || count > 1000) {
		fprintf(stderr, "usage: %s <bdf> [--count N (1..1000)]\n", argv[0]);
		return 2;
	}
	if (vfio_open(bdf, &v) < 0)
		return 1;

	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	struct vfio_region_info bar0 = { .argsz = sizeof(bar0), .index = VFIO_PCI_BAR0_REGION_INDEX };
	if (ioctl(v.device, VFIO_DEVICE_GET_REGION_INFO, &cfg) < 0 ||
	    ioctl(v.device, VFIO_DEVICE_GET_REGION_INFO, &bar0) < 0) {
		result("msi-regions", 0, "region info: %s", strerror(errno));
		return 1;
	}
	uint16_t cmd = 0;
	if (pread(v.device, &cmd, 2, (off_t)(cfg.offset + 4)) == 2) {
		cmd |= 0x6; /* memory decode, bus master (MSI writes are memory writes) */
		if (pwrite(v.device, &cmd, 2, (off_t)(cfg.offset + 4)) != 2)
			fprintf(stderr, "command write: %s\n", strerror(errno));
	}

	const unsigned index = intx ? VFIO_PCI_INTX_IRQ_INDEX : VFIO_PCI_MSI_IRQ_INDEX;
	const char *kind = intx ? "intx" : "msi";
	char name[32];
	struct vfio_irq_info info = { .argsz = sizeof(info), .index = index };
	snprintf(name, sizeof(name), "%s-info", kind);
	if (ioctl(v.device, VFIO_DEVICE_GET_IRQ_INFO, &info) < 0 || info.count == 0) {
		result(name, 0, "%s index: count=%u (%s)", kind, info.count, strerror(errno));
		return 1;
	}
	result(name, 1, "vectors=%u flags=0x%x", info.count, info.flags);

	int efd = eventfd(0, EFD_CLOEXEC);
	int err = efd < 0 ? -errno : set_irq(v.device, index, efd);
	snprintf(name, sizeof(name), "%s-enable", kind);
	result(name, err == 0, "err=%s", err ? strerror(-err) : "none");
	if (err)
		return 1;

	unsigned received = 0;
	uint64_t worst_us = 0, total_us = 0;
	for (unsigned i = 0; i < count; i++) {
		uint64_t t0 = now_ns();
		wr32(v.device, bar0.offset, EDU_IRQ_RAISE, 1u << (i % 8));
		struct pollfd p = { .fd = efd, .events = POLLIN };
		int n = poll(&p, 1, 5000);
		uint64_t us = (now_ns() - t0) / 1000;
		if (n == 1) {
			uint64_t hits;
			if (read(efd, &hits, sizeof(hits)) == sizeof(hits))
				received++;
			total_us += us;
			if (us > worst_us)
				worst_us = us;
		}
		uint32_t status = rd32(v.device, bar0.offset, EDU_IRQ_STATUS);
		wr32(v.device, bar0.offset, EDU_IRQ_ACK, status);
		/* INTx: the line is down now (acknowledged); let VFIO deliver the next one. */
		if (intx && unmask_irq(v.device, index) < 0)
			fprintf(stderr, "unmask: %s\n", strerror(errno));
		if (n != 1)
			break;
	}
	snprintf(name, sizeof(name), "%s-irq", kind);
	/* The mean besides the worst: one slow delivery (a host hiccup) hides nothing then. */
	result(name, received == count, "raised=%u received=%u worst_us=%llu mean_us=%llu", count, received,
	       (unsigned long long)worst_us, (unsigned long long)(received ? total_us / received : 0));
	set_irq(v.device, index, -1);
	close(efd);
	vfio_close(&v);
	printf("RESULT name=vfio-edu-%s status=%s detail=failures=%d\n", kind, g_failures ? "fail" : "pass",
	       g_failures);
	return g_failures ? 1 : 0;
}
