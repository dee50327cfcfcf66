# --- pbq job ${job_name}: run the command in its workspace, record its exit status ---
# One run per attempt: the first cluster job of it claims the marker (O_EXCL, via noclobber);
# another one (a resubmission after an unclear failure) finds it taken and does not run.
pbq_me="$${SLURM_JOB_ID:-$${PBS_JOBID:-$${LSB_JOBID:-$${JOB_ID:-?}}}} $$(hostname) $$$$"
if ! ( set -C; printf '%s\n' "$$pbq_me" > ${claim_file} ) 2>/dev/null; then
    echo "pbq: job ${job_name} already runs elsewhere (${claim_file} is taken): not run again" >&2
    printf '%s\n' "$$pbq_me" >> ${dup_file}
    exit 0
fi
pbq_exit() {
    printf '%s\n' "$$1" > ${exit_tmp} && mv -f ${exit_tmp} ${exit_file}
    exit "$$1"
}
cd ${workspace} || { echo "pbq: cannot enter workspace "${workspace} >&2; pbq_exit 125; }
pbq_command=${command}
if /usr/bin/time -f '' -o /dev/null true 2>/dev/null; then
    /usr/bin/time -o ${usage_tmp} -f 'pbq-usage maxrss_kb=%M user_s=%U sys_s=%S elapsed_s=%e' \
        /bin/sh -c "$$pbq_command"
    pbq_rc=$$?
    mv -f ${usage_tmp} ${usage_file} 2>/dev/null
else
    /bin/sh -c "$$pbq_command"
    pbq_rc=$$?
fi
pbq_exit "$$pbq_rc"
