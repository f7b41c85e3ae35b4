/* test_notify.c - sd_notify datagrams to a real socket, and the watchdog interval. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "notify.h"

#include "mn_test.h"

static char tmpdir[MN_TEST_DIRLEN];
static char sockpath[128];

static void setup(void)
{
	mn_test_tmpdir(tmpdir, sizeof(tmpdir));
	snprintf(sockpath, sizeof(sockpath), "%s/notify.sock", tmpdir);
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
}

static void teardown(void)
{
	mn_test_rmtree(tmpdir);
}

/* A datagram socket bound at path ('@' for an abstract name), as systemd's is. */
static int listener(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(fd, 0);
	memcpy(sa.sun_path, path, strlen(path));
	if (path[0] == '@')
		sa.sun_path[0] = '\0';
	else
		len++;
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, len), 0);
	return fd;
}

/* Receives one datagram without waiting: mn_notify has returned, so it is queued. */
static void expect_datagram(int fd, const char *want)
{
	char buf[2048];
	ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);

	ck_assert_int_ge(n, 0);
	buf[n] = '\0';
	ck_assert_str_eq(buf, want);
}

START_TEST(test_unset_is_silent)
{
	char err[256] = "";

	ck_assert(!mn_notify_enabled());
	ck_assert_int_eq(mn_notify("READY=1", err, sizeof(err)), 0);
	setenv("NOTIFY_SOCKET", "", 1);
	ck_assert(!mn_notify_enabled());
	ck_assert_int_eq(mn_notify("READY=1", err, sizeof(err)), 0);
	ck_assert_str_eq(err, "");
}
END_TEST

START_TEST(test_path_socket)
{
	char err[256];
	int fd = listener(sockpath);

	setenv("NOTIFY_SOCKET", sockpath, 1);
	ck_assert(mn_notify_enabled());
	ck_assert_int_eq(mn_notify("READY=1", err, sizeof(err)), 1);
	expect_datagram(fd, "READY=1");
	ck_assert_int_eq(mn_notify("READY=1\nSTATUS=step 1/2", err, sizeof(err)), 1);
	expect_datagram(fd, "READY=1\nSTATUS=step 1/2");
	ck_assert_int_eq(mn_notifyf(err, sizeof(err), "STATUS=step %d, loss %.2f", 7, 0.5), 1);
	expect_datagram(fd, "STATUS=step 7, loss 0.50");
	close(fd);
}
END_TEST

START_TEST(test_abstract_socket)
{
	char name[64], err[256];
	int fd;

	snprintf(name, sizeof(name), "@mn-test-notify-%ld", (long)getpid());
	fd = listener(name);
	setenv("NOTIFY_SOCKET", name, 1);
	ck_assert_int_eq(mn_notify("WATCHDOG=1", err, sizeof(err)), 1);
	expect_datagram(fd, "WATCHDOG=1");
	close(fd);
}
END_TEST

START_TEST(test_bad_addresses)
{
	char err[256], longpath[200];

	setenv("NOTIFY_SOCKET", "relative/notify", 1);
	ck_assert_int_eq(mn_notify("READY=1", err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "relative/notify"));
	setenv("NOTIFY_SOCKET", "@", 1);
	ck_assert_int_eq(mn_notify("READY=1", err, sizeof(err)), -EINVAL);
	memset(longpath, 'a', sizeof(longpath) - 1);
	longpath[0] = '/';
	longpath[sizeof(longpath) - 1] = '\0';
	setenv("NOTIFY_SOCKET", longpath, 1);
	ck_assert_int_eq(mn_notify("READY=1", err, sizeof(err)), -EINVAL);
	/* Nobody listening: an error to log, not a crash or a hang. */
	setenv("NOTIFY_SOCKET", sockpath, 1);
	ck_assert_int_lt(mn_notify("READY=1", err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, sockpath));
}
END_TEST

START_TEST(test_too_long_message)
{
	char err[256], big[2000];
	int fd = listener(sockpath);

	setenv("NOTIFY_SOCKET", sockpath, 1);
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ck_assert_int_eq(mn_notifyf(err, sizeof(err), "STATUS=%s", big), -EMSGSIZE);
	/* Nothing half-sent. */
	ck_assert_int_lt(recv(fd, big, sizeof(big), MSG_DONTWAIT), 0);
	close(fd);
}
END_TEST

START_TEST(test_full_socket_does_not_block)
{
	char err[256];
	int fd = listener(sockpath), rc = 1, sent = 0;

	setenv("NOTIFY_SOCKET", sockpath, 1);
	/* Nobody reads: the queue fills, and then sends fail at once instead of blocking. */
	for (int i = 0; i < 100000 && rc == 1; i++) {
		rc = mn_notify("STATUS=filling the queue", err, sizeof(err));
		sent += rc == 1;
	}
	ck_assert_int_eq(rc, -EAGAIN);
	ck_assert_int_gt(sent, 0);
	close(fd);
}
END_TEST

START_TEST(test_watchdog_usec)
{
	char pid[32];

	ck_assert_uint_eq(mn_notify_watchdog_usec(false), 0);
	setenv("WATCHDOG_USEC", "400000", 1);
	ck_assert_uint_eq(mn_notify_watchdog_usec(false), 400000);
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	ck_assert_uint_eq(mn_notify_watchdog_usec(false), 400000);
	/* Meant for another process (we inherited it): not ours to feed. */
	snprintf(pid, sizeof(pid), "%ld", (long)getpid() + 1);
	setenv("WATCHDOG_PID", pid, 1);
	ck_assert_uint_eq(mn_notify_watchdog_usec(false), 0);
	setenv("WATCHDOG_PID", "garbage", 1);
	ck_assert_uint_eq(mn_notify_watchdog_usec(false), 0);
	/*
	 * The parent's: ours only when the parent is the launcher that runs us
	 * for the service (mpirun, the unit's main process, and we its rank 0).
	 */
	snprintf(pid, sizeof(pid), "%ld", (long)getppid());
	setenv("WATCHDOG_PID", pid, 1);
	ck_assert_uint_eq(mn_notify_watchdog_usec(false), 0);
	ck_assert_uint_eq(mn_notify_watchdog_usec(true), 400000);
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	ck_assert_uint_eq(mn_notify_watchdog_usec(true), 400000);
	/* Neither ours nor our parent's: a launched process does not feed it either. */
	snprintf(pid, sizeof(pid), "%ld", (long)getpid() + 1);
	setenv("WATCHDOG_PID", pid, 1);
	ck_assert_uint_eq(mn_notify_watchdog_usec(true), 0);
	setenv("WATCHDOG_PID", "garbage", 1);
	ck_assert_uint_eq(mn_notify_watchdog_usec(true), 0);
	unsetenv("WATCHDOG_PID");
	static const char *const bad[] = {
	    "", "0", "-5", "12x", "abc", " 5", "99999999999999999999999"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		setenv("WATCHDOG_USEC", bad[i], 1);
		ck_assert_msg(mn_notify_watchdog_usec(false) == 0, "WATCHDOG_USEC=\"%s\"", bad[i]);
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("notify");

	MN_TEST_ADD(mn_test_tcase(s, "core", setup, teardown), test_unset_is_silent,
	            test_path_socket, test_abstract_socket, test_bad_addresses,
	            test_too_long_message, test_full_socket_does_not_block, test_watchdog_usec);
	return mn_test_run(s);
}
