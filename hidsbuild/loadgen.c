/* Load generator for `invoke bench --only events`: openat() calls, each one `open` event of the
 * file family (its sys_enter_openat tracepoint), at a fixed rate or as fast as one core goes.
 *
 *   loadgen RATE SECONDS TAG    RATE opens/s (0: unpaced) for SECONDS; prints "opens N seconds S"
 *
 * Paths are "/nonexistent-hids-load/TAG/<n>": the lookup fails at once (no fd to close), and the
 * sequence number lets a reader check that none was lost, reordered or garbled. Paced mode issues
 * RATE/1000 opens per millisecond tick, catching up after a late tick. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	char path[128];
	unsigned long long n = 0;
	double rate, seconds, start, end;

	if (argc != 4) {
		fprintf(stderr, "usage: loadgen RATE SECONDS TAG\n");
		return 2;
	}
	rate = atof(argv[1]);
	seconds = atof(argv[2]);
	start = now();
	end = start + seconds;
	for (;;) {
		double t = now();
		unsigned long long due;

		if (t >= end)
			break;
		due = rate > 0 ? (unsigned long long)((t - start) * rate) + 1 : n + 1024;
		while (n < due) {
			snprintf(path, sizeof(path), "/nonexistent-hids-load/%s/%llu", argv[3], n);
			openat(AT_FDCWD, path, O_RDONLY);
			n++;
		}
		if (rate > 0) {
			struct timespec tick = { 0, 1000000 };

			nanosleep(&tick, NULL);
		}
	}
	printf("opens %llu seconds %.3f\n", n, now() - start);
	return 0;
}
