/* ctl_control.c - placeholder until the control client lands. */
#include <stdio.h>

#include "ctl.h"

static int not_yet(const char *what)
{
	fprintf(stderr, "mnistctl: %s is not implemented yet\n", what);
	return CTL_EXIT_FAILED;
}

int ctl_status(int argc, char **argv, const struct ctl_globals *g)
{
	return not_yet("status");
}

int ctl_reload(int argc, char **argv, const struct ctl_globals *g)
{
	return not_yet("reload");
}

int ctl_save(int argc, char **argv, const struct ctl_globals *g)
{
	return not_yet("save");
}

int ctl_pause(int argc, char **argv, const struct ctl_globals *g)
{
	return not_yet("pause");
}

int ctl_resume(int argc, char **argv, const struct ctl_globals *g)
{
	return not_yet("resume");
}
