/* twz/become.h - BECOME with the address space that goes with it. twz/rt.h includes it.
 *
 * Twizzler's BECOME replaces the calling thread's registers and, with a target_view, its view;
 * its kernel then maps the new view's objects on the next faults. On Linux the process maps its
 * own address space, so the switch is split: twzd replaces the registers (ptrace) and records
 * the view as the process's, and the runtime, before asking, re-points SLOT_CVIEW at the new
 * view object and drops every slot mapping, which named the old view's objects: the first touch
 * of a slot then maps what the new view says. A raw sys_become with a view, without this, gets
 * the registers and twzd's record but keeps the old view's mappings.
 */
#ifndef TWZ_BECOME_H
#define TWZ_BECOME_H

#include <twz/sys.h>

/* Become `args` (sys_become_args: target_view, target_rip, registers). Returns only on failure:
 * -errno, with the address space as it was. */
long twz_rt_become(struct sys_become_args *args);

#endif /* TWZ_BECOME_H */

#if defined(TWZ_BECOME_IMPLEMENTATION) && !defined(TWZ_BECOME_IMPLEMENTED)
#define TWZ_BECOME_IMPLEMENTED

/* Map view `id` at SLOT_CVIEW in place of the current one and forget every other slot. The
 * view's fd is got first: refused, the address space stays as it was. */
static long twz_rt_switch_view(objid_t id)
{
	long fd = sys_lx_objfd(id, VE_READ | VE_WRITE);
	if(fd < 0)
		return fd;
	int r = twz_rt_drop_mappings();
	if(r == 0)
		r = twz_rt_map_view((int)fd, id);
	close((int)fd);
	return r;
}

long twz_rt_become(struct sys_become_args *args)
{
	objid_t old = twz_rt.view_id;
	int switching = twz_rt.view_mapped && args->target_view && args->target_view != old;
	if(switching) {
		long r = twz_rt_switch_view(args->target_view);
		if(r < 0)
			return r;
	}
	long r = sys_become(args, 0, 0);
	if(switching)
		twz_rt_switch_view(old); /* refused: back to where we were */
	return r;
}

#endif /* TWZ_BECOME_IMPLEMENTATION */
