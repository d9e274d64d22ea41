"""``liveclass demo``: a whole live class on one machine, with no services.

The demo starts an origin and two edges in this process, a teacher in one
child process and the students in another (so the servers, the teacher's
real-time media and the students' players each get their share of the CPU),
runs a scripted class and writes a report that says whether everything
arrived.
"""
